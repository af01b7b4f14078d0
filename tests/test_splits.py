"""The split rules reproduce the reference split files; ALFWorld splits read the official layout."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from gcd_trl.envs.base import Task
from gcd_trl.envs.scienceworld import task_names
from gcd_trl.envs.splits import (
    LEVELS,
    SCIENCEWORLD_L2_HELD_OUT,
    alfworld_split,
    scienceworld_split,
    scienceworld_tasks,
    split_tasks,
)

TEST_COUNTS = {"L0": 1661, "L1": 1684, "L2": 549}
TRAIN_COUNTS = {"L0": 3322, "L1": 3322, "L2": 2242}


def as_pairs(tasks: list[Task]) -> set[tuple[int, int]]:
    index = {name: i for i, name in enumerate(task_names())}
    return {(index[t.task_name], t.variation) for t in tasks}


@pytest.mark.parametrize("level", LEVELS)
def test_scienceworld_rules_reproduce_reference_files(shared_dir, level):
    ref = json.loads((shared_dir / "data" / "scienceworld" / f"{level}_idx.json").read_text())
    split = scienceworld_split(level)
    for part in ("train", "test"):
        pairs = as_pairs(split[part])
        assert len(pairs) == len(split[part])  # no duplicates
        assert pairs == {tuple(p) for p in ref[part]}, f"{level} {part}"


@pytest.mark.parametrize("level", LEVELS)
def test_scienceworld_counts_and_fields(level):
    split = scienceworld_split(level)
    assert len(split["test"]) == TEST_COUNTS[level] and len(split["train"]) == TRAIN_COUNTS[level]
    for part, tasks in split.items():
        assert all(t.env == "scienceworld" and t.split == f"{level}/{part}" for t in tasks)
        assert "use-thermometer" not in {t.task_name for t in tasks}
    assert split_tasks("scienceworld", level, "test") == split["test"]


def test_scienceworld_l2_holds_out_ten_tasks():
    names = task_names()
    held = {names[i] for i in SCIENCEWORLD_L2_HELD_OUT}
    assert set(scienceworld_tasks("L2", "test")) == held and len(held) == 10
    train = set(scienceworld_tasks("L2", "train"))
    assert len(train) == 19 and not train & held
    assert len(scienceworld_tasks("L0", "train")) == 29


def test_bad_levels_and_parts():
    with pytest.raises(ValueError, match="L3"):
        scienceworld_split("L3")
    with pytest.raises(ValueError, match="valid"):
        split_tasks("scienceworld", "L0", "valid")
    with pytest.raises(ValueError, match="webshop"):
        split_tasks("webshop", "L0", "test")


@pytest.fixture(scope="module")
def alf_root(shared_dir):
    return shared_dir / "data" / "alfworld"


def test_alfworld_l1_test_is_valid_unseen(alf_root):
    tasks = split_tasks("alfworld", "L1", "test", alf_root)
    assert len(tasks) == 134
    assert all("/valid_unseen/" in t.game and t.split == "L1/test" for t in tasks)
    assert {t.task_type for t in tasks} == {1, 2, 3, 4, 5, 6}


def test_alfworld_l2_test_is_unseen_cool_and_pick_two(alf_root):
    tasks = split_tasks("alfworld", "L2", "test", alf_root / "json_2.1.1")  # root or json_2.1.1 both work
    assert tasks and {t.task_type for t in tasks} == {5, 6}
    everything = split_tasks("alfworld", "L1", "test", alf_root)
    assert {t.game for t in tasks} == {t.game for t in everything if t.task_type in (5, 6)}


def test_alfworld_train_falls_back_to_valid_train(alf_root):
    with pytest.warns(UserWarning, match="valid_train"):
        train = split_tasks("alfworld", "L2", "train", alf_root)
    assert train and {t.task_type for t in train} <= {1, 2, 3, 4}
    assert all("/valid_train/" in t.game for t in train)
    with pytest.warns(UserWarning):
        assert len(split_tasks("alfworld", "L1", "train", alf_root)) == 200


def test_alfworld_missing_dirs_name_the_path(alf_root, tmp_path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match="valid_seen.*ALFWORLD_DATA"):
            alfworld_split("L0", alf_root)
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="nowhere.*ALFWORLD_DATA"):
        split_tasks("alfworld", "L1", "test", tmp_path / "nowhere")
    (tmp_path / "json_2.1.1" / "valid_unseen").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"json_2.1.1/train"):
        split_tasks("alfworld", "L1", "train", tmp_path)
    with pytest.raises(ValueError, match="no playable"):
        split_tasks("alfworld", "L1", "test", tmp_path)


def test_alfworld_official_layout_and_env_var(alf_root, tmp_path, monkeypatch):
    # an official-looking tree: train / valid_seen / valid_unseen, read through $ALFWORLD_DATA
    src = alf_root / "json_2.1.1"
    dst = tmp_path / "json_2.1.1"
    dst.mkdir()
    (dst / "train").symlink_to(src / "valid_train")
    (dst / "valid_unseen").symlink_to(src / "valid_unseen")
    seen = sorted(p for p in (src / "valid_train").iterdir() if p.is_dir())[:5]
    for game_family in seen:
        shutil.copytree(game_family, dst / "valid_seen" / game_family.name)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # `train` exists: no fallback warning
        l0 = alfworld_split("L0")
        l2 = alfworld_split("L2")
    assert len(l0["train"]) == 200 and 5 <= len(l0["test"])
    assert all("/valid_seen/" in t.game and t.split == "L0/test" for t in l0["test"])
    assert {t.task_type for t in l2["train"]} <= {1, 2, 3, 4} and {t.task_type for t in l2["test"]} == {5, 6}


def test_alfworld_all_reads_a_flat_directory_of_games(alf_root, tmp_path):
    games = sorted(p for p in (alf_root / "json_2.1.1" / "valid_unseen").rglob("trial_*") if p.is_dir())[:3]
    for i, game in enumerate(games):
        shutil.copytree(game, tmp_path / f"game_{i}")
    split = alfworld_split("all", tmp_path)
    assert [t.game for t in split["train"]] == [str(tmp_path / f"game_{i}") for i in range(3)]
    assert [t.game for t in split["test"]] == [t.game for t in split["train"]]
    assert split["test"][0].split == "all/test"
    assert split_tasks("alfworld", "all", "train", tmp_path) == split["train"]
    with pytest.raises(ValueError, match="data_dir"):
        alfworld_split("all")
