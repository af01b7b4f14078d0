"""Benchmark splits L0/L1/L2 for ALFWorld and ScienceWorld, as rules rather than copied lists.

ScienceWorld (the RLVMR/GCD split files, reproduced exactly by these rules; indices are into the
alphabetical task names):
- L0: train = train variations of the 29 tasks other than `use-thermometer`; test = their dev variations.
- L1: same train; test = the test variations of those 29 tasks.
- L2: train = train variations of 19 of them; test = test variations of the 10 held-out tasks
  (indices 1, 4, 8, 11, 13, 16, 18, 21, 24, 28).

ALFWorld (official json_2.1.1 layout under `data_dir`, by default `$ALFWORLD_DATA/json_2.1.1`):
- L0: train = `train`; test = `valid_seen`.  L1: train = `train`; test = `valid_unseen`.
- L2: train = `train` games of task types 1-4; test = `valid_unseen` games of types 5 and 6.
- When `train` is absent but `valid_train` is there (e.g. ../shared/data/alfworld), the train part
  uses `valid_train`, with a warning.
- Level "all": every game found under `data_dir` (any layout, e.g. a flat directory of generated
  games) is in both parts; keep training and evaluation games in separate directories yourself.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from gcd_trl.envs.base import ENV_NAMES, Task

LEVELS = ("L0", "L1", "L2")
PARTS = ("train", "test")

SCIENCEWORLD_EXCLUDED = ("use-thermometer",)
SCIENCEWORLD_L2_HELD_OUT = (1, 4, 8, 11, 13, 16, 18, 21, 24, 28)
_SCIENCEWORLD_TEST_SET = {"L0": "dev", "L1": "test", "L2": "test"}

ALFWORLD_TEST_DIRS = {"L0": "valid_seen", "L1": "valid_unseen", "L2": "valid_unseen"}
ALFWORLD_TRAIN_DIRS = ("train", "valid_train")  # the first one present is used
ALFWORLD_L2_TRAIN_TYPES = (1, 2, 3, 4)
ALFWORLD_L2_TEST_TYPES = (5, 6)
ALFWORLD_ALL = "all"


def _check(level: str, levels: tuple[str, ...], part: str | None = None) -> None:
    if level not in levels:
        raise ValueError(f"unknown split level {level!r}; expected one of {levels}")
    if part is not None and part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; expected one of {PARTS}")


# ----------------------------------------------------------------------------------- ScienceWorld
def scienceworld_tasks(level: str, part: str) -> list[str]:
    """The task names a ScienceWorld split part draws from, in index order."""
    _check(level, LEVELS, part)
    from gcd_trl.envs.scienceworld import task_names  # the engine loads only when a split needs it

    names = task_names()
    pool = [n for n in names if n not in SCIENCEWORLD_EXCLUDED]
    if level != "L2":
        return pool
    held_out = {names[i] for i in SCIENCEWORLD_L2_HELD_OUT}
    return [n for n in pool if (n in held_out) == (part == "test")]


def _scienceworld_part(level: str, part: str) -> list[Task]:
    from gcd_trl.envs.scienceworld import variations

    which = "train" if part == "train" else _SCIENCEWORLD_TEST_SET[level]
    return [
        Task(env="scienceworld", split=f"{level}/{part}", task_name=name, variation=v)
        for name in scienceworld_tasks(level, part)
        for v in variations(name, which)
    ]


def scienceworld_split(level: str) -> dict[str, list[Task]]:
    """{"train": [Task], "test": [Task]} for ScienceWorld level L0, L1 or L2 (no JVM needed)."""
    _check(level, LEVELS)
    return {part: _scienceworld_part(level, part) for part in PARTS}


# --------------------------------------------------------------------------------------- ALFWorld
def _alfworld_root(data_dir: str | os.PathLike | None) -> Path:
    from gcd_trl.envs.alfworld import default_data_dir

    root = Path(default_data_dir() if data_dir is None else data_dir).expanduser()
    if (root / "json_2.1.1").is_dir():
        root = root / "json_2.1.1"
    if not root.is_dir():
        raise FileNotFoundError(
            f"ALFWorld data directory not found: {root} (pass data_dir, or set $ALFWORLD_DATA to the "
            f"folder holding json_2.1.1; $ALFWORLD_DATA is {os.environ.get('ALFWORLD_DATA', 'unset')})"
        )
    return root


def _alfworld_games(level: str, part: str, split_dir: Path, types: tuple[int, ...] | None) -> list[Task]:
    from gcd_trl.envs.alfworld import list_games, task_type_of
    from gcd_trl.envs.alfworld_gen import GamesFolderError, folder_max_receptacles

    games = list_games(split_dir, task_types=types)
    if not games:
        which = "any task type" if types is None else f"task types {list(types)}"
        raise ValueError(f"no playable ALFWorld games of {which} under {split_dir} ({level} {part})")
    try:
        folder_max_receptacles(games)  # one room size a split
    except GamesFolderError as err:
        raise ValueError(f"{split_dir} ({level} {part}): {err}") from None
    return [Task(env="alfworld", split=f"{level}/{part}", game=g, task_type=task_type_of(g)) for g in games]


def _alfworld_part(level: str, part: str, root: Path) -> list[Task]:
    if part == "test":
        split_dir = root / ALFWORLD_TEST_DIRS[level]
        types = ALFWORLD_L2_TEST_TYPES if level == "L2" else None
    else:
        present = [root / d for d in ALFWORLD_TRAIN_DIRS if (root / d).is_dir()]
        split_dir = present[0] if present else root / ALFWORLD_TRAIN_DIRS[0]
        if present and split_dir.name != ALFWORLD_TRAIN_DIRS[0]:
            warnings.warn(
                f"ALFWorld {root / ALFWORLD_TRAIN_DIRS[0]} not found: training on {split_dir} instead",
                stacklevel=3,
            )
        types = ALFWORLD_L2_TRAIN_TYPES if level == "L2" else None
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"ALFWorld split directory {split_dir} not found (needed for {level} {part}); the official "
            f"data comes from `alfworld-download` into $ALFWORLD_DATA "
            f"(now {os.environ.get('ALFWORLD_DATA', 'unset')})"
        )
    return _alfworld_games(level, part, split_dir, types)


def alfworld_split(level: str, data_dir: str | os.PathLike | None = None) -> dict[str, list[Task]]:
    """{"train": [Task], "test": [Task]} for ALFWorld level L0, L1, L2, or "all" (every game under data_dir)."""
    _check(level, (*LEVELS, ALFWORLD_ALL))
    if level == ALFWORLD_ALL:
        if data_dir is None:
            raise ValueError('alfworld_split("all") needs data_dir (a directory of games)')
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"ALFWorld games directory not found: {root}")
        return {part: _alfworld_games(level, part, root, None) for part in PARTS}
    root = _alfworld_root(data_dir)
    return {part: _alfworld_part(level, part, root) for part in PARTS}


# ----------------------------------------------------------------------------------- convenience
def split_tasks(env: str, level: str, part: str, data_dir: str | os.PathLike | None = None) -> list[Task]:
    """One part ("train" | "test") of a split; only that part's directory has to exist.

    `data_dir` is ALFWorld's data root (ignored for ScienceWorld, whose lists ship with the package).
    """
    if env not in ENV_NAMES:
        raise ValueError(f"unknown env {env!r}; expected one of {ENV_NAMES}")
    if env == "scienceworld":
        _check(level, LEVELS, part)
        return _scienceworld_part(level, part)
    _check(level, (*LEVELS, ALFWORLD_ALL), part)
    if level == ALFWORLD_ALL:
        return alfworld_split(level, data_dir)[part]
    return _alfworld_part(level, part, _alfworld_root(data_dir))
