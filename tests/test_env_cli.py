"""`gcd-trl env` and the expert runner, against the real ALFWorld and ScienceWorld engines."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gcd_trl.rollout.parse import parse_output

REPO = Path(__file__).resolve().parents[1]
# two valid_unseen games whose handcoded expert path is short (about 11 steps each)
SHORT_GAMES = (
    "look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542",
    "pick_and_place_simple-Mug-None-Desk-308/trial_T20190908_125200_737896",
)
SHORT_SCIENCEWORLD_TASK = "lifespan-longest-lived"  # gold path of about 6 steps


def cli(*args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "gcd_trl", "env", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"gcd-trl env {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


def load_jsonl(path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


@pytest.fixture(scope="module")
def short_games(shared_dir, tmp_path_factory):
    """A games directory holding copies of the two short valid_unseen games."""
    root = tmp_path_factory.mktemp("games")
    for rel in SHORT_GAMES:
        src = shared_dir / "data/alfworld/json_2.1.1/valid_unseen" / rel
        if not src.is_dir():
            pytest.skip(f"{src} not found in the shared data")
        shutil.copytree(src, root / rel)
    return root


# ---- argument checks: no env starts --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--environment", "scienceworld", "--games", "."], "--games is for alfworld"),
        (["replay", "--environment", "alfworld", "--games", "/no/such/dir"], "no such directory"),
        (
            ["replay", "--environment", "alfworld", "--games", ".", "--max_tasks", "0"],
            "--max_tasks must be >= 1",
        ),
        (
            ["replay", "--environment", "alfworld", "--games", ".", "--max_episode_steps", "0"],
            "--max_episode_steps must be >= 1",
        ),
        (
            ["replay", "--environment", "alfworld", "--games", ".", "--task_types", "7"],
            "--task_types must be in 1-6",
        ),
        (
            ["replay", "--environment", "alfworld", "--games", ".", "--scienceworld_tasks", "boil"],
            "--scienceworld_tasks is for scienceworld",
        ),
        (
            ["replay", "--environment", "alfworld", "--games", ".", "--prompt_template", "nope"],
            "neither a built-in",
        ),
        (
            ["replay", "--environment", "scienceworld", "--split", "L0", "--jvm_heap", "abc"],
            "--jvm_heap 'abc' must look like 512m or 2g",
        ),
        (["replay", "--games", "."], "--environment is required"),
        (["replay", "--environment", "alfworld"], "one of --games DIR or --split"),
        (["expert", "--environment", "alfworld", "--games", ".", "--output", "."], "is a directory"),
        (["expert", "--environment", "alfworld", "--games", "."], "--output is required"),
        (["generate-alfworld", "--data_dir", "x", "--generate_games", "0"], "--generate_games must be >= 1"),
        (
            ["generate-alfworld", "--data_dir", "x", "--generate_games", "1", "--task_types", "0"],
            "--task_types must be in 1-6",
        ),
        (
            ["generate-alfworld", "--data_dir", "x", "--generate_games", "1", "--generate_seed", "-1"],
            "--generate_seed must be >= 0",
        ),
        (["generate-alfworld", "--generate_games", "1"], "--data_dir is required"),
        (
            ["generate-alfworld", "--data_dir", "x", "--generate_games", "1", "--max_receptacles", "2"],
            "--max_receptacles must be >= 3",
        ),
        # the old dashed spellings still work (hidden from -h)
        (["replay", "--env", "alfworld", "--games", ".", "--limit", "0"], "--max_tasks must be >= 1"),
        (
            ["replay", "--env", "alfworld", "--games", ".", "--max-steps", "0"],
            "--max_episode_steps must be >= 1",
        ),
        (["generate-alfworld", "--out", "x", "--num", "1", "--seed", "-1"], "--generate_seed must be >= 0"),
    ],
)
def test_bad_arguments_fail_before_any_env(args, message, capsys):
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["env", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_template_file_is_named(tmp_path, capsys):
    from gcd_trl.cli import main

    bad = tmp_path / "agent.txt"
    bad.write_text("{task_description} {current_observation} {admissible_actions} {oops}")
    with pytest.raises(SystemExit):
        main(
            [
                "env",
                "replay",
                "--environment",
                "alfworld",
                "--games",
                str(tmp_path),
                "--prompt_template",
                str(bad),
            ]
        )
    err = capsys.readouterr().err
    assert "agent.txt" in err and "{oops}" in err


def test_cli_bad_args_exit_code_via_subprocess():
    proc = cli("replay", "--environment", "scienceworld", "--split", "L9", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


# ---- ALFWorld ------------------------------------------------------------------------------------------
def test_alfworld_expert_jsonl_and_replay(short_games, tmp_path):
    out = tmp_path / "expert.jsonl"
    summary = json.loads(
        cli("expert", "--environment", "alfworld", "--games", str(short_games), "--output", str(out)).stdout
    )
    assert summary["episodes"] == 2 and summary["success"] == 1.0 and summary["num_faults"] == 0
    assert summary["failed"] == [] and not (tmp_path / "expert.jsonl.partial").exists()
    assert set(summary["by_type"]) == {"look_at_obj_in_light", "pick_and_place_simple"}

    ds = load_jsonl(out)
    assert len(ds) == summary["records"] > 2
    assert {"task", "prompt", "completion", "action", "observation", "won", "step", "episode"} <= set(
        ds.column_names
    )
    for row in ds:
        assert row["won"] is True and row["task"]["env"] == "alfworld"
        parsed = parse_output(row["completion"], None)
        assert parsed.valid and parsed.action == row["action"]
        assert f"'{row['action']}'" in row["prompt"]  # the expert's action was admissible as shown
        assert row["observation"] in row["prompt"]
    first = [r for r in ds if r["step"] == 0]
    assert len(first) == 2 and all("Prior to this step" not in r["prompt"] for r in first)

    replay = json.loads(
        cli(
            "replay",
            "--environment",
            "alfworld",
            "--games",
            str(short_games),
            "--meta_reasoning",
            "--max_tasks",
            "1",
        ).stdout
    )
    assert replay["episodes"] == 1 and replay["success"] == 1.0
    assert replay["mean_steps"] > 0 and replay["wall_time_s"] > 0


def test_generated_games_replay(tmp_path):
    games = tmp_path / "gen"
    gen = cli(
        "generate-alfworld",
        "--data_dir",
        str(games),
        "--generate_games",
        "1",
        "--generate_seed",
        "3",
        "--task_types",
        "2",
    )
    summary = json.loads(gen.stdout)
    assert summary["games"] == summary["generated"] == summary["total_games"] == 1
    assert summary["task_types"] == [2]
    assert "games:" in gen.stderr  # the progress bar
    summary = json.loads(cli("replay", "--environment", "alfworld", "--games", str(games)).stdout)
    assert summary["episodes"] == 1 and summary["success"] == 1.0
    assert summary["by_type"] == {"look_at_obj_in_light": {"episodes": 1, "success": 1.0}}
    assert summary["failed"] == []


def test_expert_in_process_rlvmr_records(short_games, tmp_path):
    from gcd_trl.envs.alfworld import AlfWorldEnv
    from gcd_trl.envs.base import Task
    from gcd_trl.rollout.expert import write_expert_jsonl

    game = str(short_games / SHORT_GAMES[1])
    task = Task(env="alfworld", split="t", game=game, task_type=1)
    with AlfWorldEnv() as env:
        summary = write_expert_jsonl(env, [task], tmp_path / "r.jsonl", meta_reasoning=True, max_steps=30)
    assert summary["success"] == 1.0
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    tags = [parse_output(r["completion"], None, meta_reasoning=True).tag for r in rows]
    assert tags[0] == "planning" and set(tags) <= {"planning", "explore", "monitor"}
    assert "Your current plan is" in rows[1]["prompt"]


def test_expert_faults_are_counted_and_max_steps_truncates(short_games, tmp_path):
    from gcd_trl.envs.base import EnvSpec, Task
    from gcd_trl.rollout.expert import replay

    missing = Task(env="alfworld", split="t", game=str(tmp_path / "no_such_game"), task_type=1)
    task = Task(env="alfworld", split="t", game=str(short_games / SHORT_GAMES[1]), task_type=1)
    summary = replay(EnvSpec(env="alfworld"), [missing, task], max_steps=2)
    assert summary["episodes"] == 2 and summary["success"] == 0.0
    assert summary["num_faults"] == 1 and "no_such_game" in summary["faults"][0]
    assert summary["mean_steps"] == 2  # the faulted episode has no steps; the other was cut at 2


# ---- ScienceWorld --------------------------------------------------------------------------------------
def test_scienceworld_gold_path_expert_and_replay(tmp_path):
    out = tmp_path / "sw.jsonl"
    summary = json.loads(
        cli(
            "expert",
            "--environment",
            "scienceworld",
            "--split",
            "L0",
            "--scienceworld_tasks",
            SHORT_SCIENCEWORLD_TASK,
            "--max_tasks",
            "1",
            "--output",
            str(out),
        ).stdout
    )
    assert summary["episodes"] == 1 and summary["success"] == 1.0
    ds = load_jsonl(out)
    assert len(ds) == summary["records"] >= 2
    for row in ds:
        assert row["task"]["task_name"] == SHORT_SCIENCEWORLD_TASK and row["won"] is True
        assert "Current available actions:" in row["prompt"] and "Valid actions:" in row["prompt"]
        assert parse_output(row["completion"], None).action == row["action"]

    replay = json.loads(
        cli(
            "replay",
            "--environment",
            "scienceworld",
            "--split",
            "L0",
            "--scienceworld_tasks",
            SHORT_SCIENCEWORLD_TASK,
            "--max_tasks",
            "1",
            "--meta_reasoning",
        ).stdout
    )
    assert replay["episodes"] == 1 and replay["success"] == 1.0
    assert replay["by_type"] == {SHORT_SCIENCEWORLD_TASK: {"episodes": 1, "success": 1.0}}


def test_scienceworld_unknown_task_name_is_named(capsys):
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "env",
                "replay",
                "--environment",
                "scienceworld",
                "--split",
                "L2",
                "--part",
                "test",
                "--scienceworld_tasks",
                "boil",
            ]
        )
    assert exc.value.code == 2
    assert "'boil' is not a task of L2 test" in capsys.readouterr().err
