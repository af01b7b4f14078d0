"""Which tasks each round plays: the training dataset's tasks (`split_rows`) and a seeded, resumable walk
through shuffled epochs of them (`RoundTaskSampler`)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from gcd_trl.envs.base import Task


class RoundTaskSampler:
    """Which tasks round r plays: round-robin through shuffled epochs of the task list.

    Positions r*T .. r*T+T-1 of an endless sequence made of permutations of the N tasks, permutation e
    drawn from (seed, e). Round r is a pure function of (seed, r), so the sampler's whole state is the
    round cursor: a resumed run that restores it plays exactly the tasks the uninterrupted run would.
    Process p of P plays the p-th contiguous slice of T/P tasks of each round.
    """

    def __init__(
        self,
        num_tasks: int,
        tasks_per_round: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        num_processes: int = 1,
        process_index: int = 0,
        fingerprint: str = "",
    ) -> None:
        if num_tasks < 1:
            raise ValueError("RoundTaskSampler: the task list is empty")
        if tasks_per_round < 1:
            raise ValueError(f"RoundTaskSampler: tasks_per_round={tasks_per_round} must be >= 1")
        if tasks_per_round % num_processes:
            raise ValueError(
                f"RoundTaskSampler: tasks_per_round={tasks_per_round} is not divisible by "
                f"{num_processes} processes"
            )
        if not 0 <= process_index < num_processes:
            raise ValueError(f"RoundTaskSampler: process_index={process_index} not in 0..{num_processes - 1}")
        self.num_tasks, self.tasks_per_round = num_tasks, tasks_per_round
        self.seed, self.shuffle = seed, shuffle
        self.num_processes, self.process_index = num_processes, process_index
        self.fingerprint = fingerprint
        self.round = 0  # the next round to play
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            order = list(range(self.num_tasks))
            if self.shuffle:
                random.Random(f"{self.seed}:{epoch}").shuffle(order)  # str seeds hash stably (sha512)
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = order
        return self._perms[epoch]

    def global_round(self, r: int) -> list[int]:
        """The task indices of round r, over all processes."""
        start = r * self.tasks_per_round
        return [
            self._perm(p // self.num_tasks)[p % self.num_tasks]
            for p in range(start, start + self.tasks_per_round)
        ]

    def local_round(self, r: int) -> list[int]:
        """This process's share of round r."""
        per = self.tasks_per_round // self.num_processes
        return self.global_round(r)[self.process_index * per : (self.process_index + 1) * per]

    def next_round(self) -> list[int]:
        """This process's tasks for the next round; advances the cursor."""
        out = self.local_round(self.round)
        self.round += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_tasks": self.num_tasks,
            "tasks_per_round": self.tasks_per_round,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cursor; refuse a state made for another task list or round size."""
        for key in ("seed", "shuffle", "num_tasks", "tasks_per_round", "fingerprint"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"task sampler state does not match this run: {key}={state[key]!r} in the checkpoint, "
                    f"{getattr(self, key)!r} now (resume with the same tasks, seed and tasks_per_round)"
                )
        self.round = int(state["round"])


def tasks_fingerprint(rows: Sequence[Any]) -> str:
    """A short stable hash of the task list, so a checkpoint is not resumed onto other tasks."""
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(sorted(row.items()) if isinstance(row, dict) else row).encode())
    return h.hexdigest()[:16]


def split_rows(rows: list[dict], env_args: Any, gcd_on: bool) -> tuple[list[Task], list[dict]]:
    """The dataset's episode tasks and (GCD) static judge rows: one dataset interleaves them, `kind` tells
    them apart. ValueError names a row kind, env or combination the run cannot use."""
    if not rows:
        raise ValueError("AgentGRPOTrainer: train_dataset (one row per task) is empty")
    kinds = sorted({r.get("kind") or "episode" for r in rows} - {"episode", "judge"})
    if kinds:
        raise ValueError(f"AgentGRPOTrainer: train_dataset has rows of kind {kinds[0]!r} (episode | judge)")
    judge_rows = [r for r in rows if r.get("kind") == "judge"]
    tasks = [Task.from_dict(r) for r in rows if (r.get("kind") or "episode") == "episode"]
    if not tasks:
        raise ValueError("AgentGRPOTrainer: train_dataset has judge rows but no episode tasks")
    if judge_rows and not gcd_on:
        raise ValueError("AgentGRPOTrainer: train_dataset has judge rows (kind=judge) but gcd is off")
    bad = sorted({t.env for t in tasks} - {env_args.environment})
    if bad:
        raise ValueError(
            f"AgentGRPOTrainer: train_dataset has tasks of env {bad[0]!r} but environment={env_args.environment!r}"
        )
    return tasks, judge_rows
