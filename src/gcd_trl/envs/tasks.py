"""Which tasks a run plays: the one selector from a benchmark split (or a folder of ALFWorld games) to a
filtered list, and the name of a task's kind.

    tasks = select_tasks("alfworld", "L1", "test", task_types=[1, 2], max_tasks=12)

`max_tasks` takes tasks round-robin across kinds (ALFWorld task types, ScienceWorld task names), in split
order within a kind, so a small limit still covers every kind. Used by `gcd-trl rl`, `eval`, `env` and
`data` alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gcd_trl.envs.alfworld import TASK_TYPES as ALFWORLD_TASK_TYPES
from gcd_trl.envs.base import Task


def task_type_name(task: Task) -> str:
    """A task's kind, as reports break results down: ALFWorld's task type name, ScienceWorld's task name."""
    if task.env == "alfworld":
        return ALFWORLD_TASK_TYPES.get(task.task_type or 0, str(task.task_type))
    return str(task.task_name)


def _kind(task: Task) -> Any:
    return task.task_type if task.env == "alfworld" else task.task_name


def round_robin(tasks: Sequence[Task], limit: int | None) -> list[Task]:
    """Up to `limit` tasks taken in turn from each kind, keeping split order within a kind (all of them, in
    their order, when `limit` is None or keeps every task)."""
    if limit is None or limit >= len(tasks):
        return list(tasks)
    queues: dict[Any, list[Task]] = {}
    for t in tasks:
        queues.setdefault(_kind(t), []).append(t)
    picked: list[Task] = []
    while len(picked) < limit:
        for q in queues.values():
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return picked


def select_tasks(
    environment: str,
    split: str | None = None,
    part: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    games: str | os.PathLike | None = None,
    task_types: Sequence[int] | None = None,
    scienceworld_tasks: Sequence[str] | None = None,
    max_tasks: int | None = None,
) -> list[Task]:
    """The tasks of `split` / `part` (or every playable game under `games`, ALFWorld), narrowed to
    `task_types` / `scienceworld_tasks`, then to `max_tasks` round-robin across kinds.

    Raises ValueError (or FileNotFoundError for a missing data folder) naming the problem; never an empty
    list."""
    if games is not None:
        from gcd_trl.envs.alfworld import list_games, task_type_of

        if environment != "alfworld":
            raise ValueError("games (a folder of games) applies to environment=alfworld only")
        found = list_games(games, task_types=task_types)
        tasks = [
            Task(env="alfworld", split=Path(games).name, game=g, task_type=task_type_of(g)) for g in found
        ]
        if not tasks:
            raise ValueError(
                f"games {games}: no playable ALFWorld games found (game.tw-pddl + traj_data.json)"
            )
    else:
        from gcd_trl.envs.splits import split_tasks

        tasks = split_tasks(environment, split, part, data_dir)
        if task_types:
            tasks = [t for t in tasks if t.task_type in task_types]
    if scienceworld_tasks:
        known = {t.task_name for t in tasks}
        unknown = [n for n in scienceworld_tasks if n not in known]
        if unknown:
            raise ValueError(
                f"scienceworld_tasks: {unknown[0]!r} is not a task of {split} {part}; "
                f"known: {', '.join(sorted(known))}"
            )
        tasks = [t for t in tasks if t.task_name in scienceworld_tasks]
    if not tasks:
        raise ValueError(
            f"no {environment} tasks in split={split} part={part} with task_types={task_types} "
            f"scienceworld_tasks={scienceworld_tasks}" + (f" under {data_dir}" if data_dir else "")
        )
    return round_robin(tasks, max_tasks)


def task_id(task: Any, games_root: str | None) -> str:
    """A short id of a task: the game path relative to `games_root`, or the ScienceWorld task:variation."""
    if task.env == "alfworld" and games_root:
        try:
            return os.path.relpath(task.game, games_root)
        except ValueError:
            pass
    return task.key.split(":", 1)[1]


def playable(tasks: Sequence[Task], games_root: str | None = None) -> tuple[list[Task], dict[str, str]]:
    """The tasks whose games can be played, and the others (`task_id` -> why): an ALFWorld game whose files
    are unreadable or whose PDDL does not parse is found here, before any env starts (fast-downward would
    exit the process). ScienceWorld tasks all pass."""
    from gcd_trl.envs.alfworld import game_problem

    bad: dict[str, str] = {}
    for t in tasks:
        problem = game_problem(t.game) if t.env == "alfworld" else None
        if problem:
            bad[task_id(t, games_root)] = problem
    return [t for t in tasks if task_id(t, games_root) not in bad], bad
