"""Which checkpoint a run can resume from, decided before any model loads.

`AgentGRPOTrainer` writes its own state files into a checkpoint folder first and lets Trainer write
`trainer_state.json` last (after the weights and the optimizer, before it prunes older checkpoints), so a
folder holding both is complete; a kill while saving leaves an incomplete newest folder next to the
previous complete one, and resuming falls back to that one with a message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SAMPLER_STATE_NAME = "task_sampler.json"
JUDGE_STATE_NAME = "gcd_state.json"
CHECKPOINT_FILES = ("trainer_state.json", SAMPLER_STATE_NAME)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a checkpoint folder cannot be resumed (the missing file, named), or None when it can."""
    if not Path(folder).is_dir():
        return f"{folder}: no such checkpoint directory"
    missing = [name for name in CHECKPOINT_FILES if not (Path(folder) / name).is_file()]
    if missing:
        return f"{folder} is incomplete (no {missing[0]}: killed while saving, or not written by gcd-trl)"
    return None


def find_resumable_checkpoint(output_dir: str | os.PathLike) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint under `output_dir`, and why newer ones were skipped."""
    root = Path(output_dir)
    if not root.is_dir():
        return None, []
    found = sorted(
        ((int(m.group(1)), child) for child in root.iterdir() if (m := _CHECKPOINT.fullmatch(child.name))),
        reverse=True,
    )
    skipped = []
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder), skipped
        skipped.append(problem)
    return None, skipped


def resolve_resume(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """`resume_from_checkpoint` as a folder to resume from, or None to start fresh.

    true / "last": the newest complete checkpoint of output_dir (incomplete newer ones are skipped with a
    message; none at all starts fresh with a message); a path must be a complete checkpoint.
    Raises ValueError naming the problem.
    """
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last")):
        folder, skipped = find_resumable_checkpoint(output_dir)
        for why in skipped:
            print(f"gcd-trl: skipping {why}", flush=True)
        if folder is None:
            print(f"gcd-trl: no complete checkpoint in {output_dir}: starting from scratch", flush=True)
        return folder
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(f"resume_from_checkpoint: {problem}")
    return str(value)
