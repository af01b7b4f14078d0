"""Checkpoints of an RL run: what the trainers add to a checkpoint folder, and which checkpoint a run can
resume from, decided before any model loads.

`AgentGRPOTrainer` writes its own state files into a checkpoint folder first and lets Trainer write
`trainer_state.json` last (after the weights and the optimizer, before it prunes older checkpoints), so a
folder holding both is complete; a kill while saving leaves an incomplete newest folder next to the
previous complete one, and resuming falls back to that one with a message.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from gcd_trl import files

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


# ---------------------------------------------------------------------------------------------------------
# What the trainers add to a checkpoint (each written atomically, before Trainer's own files)


def save_run_state(
    folder: str | os.PathLike, sampler_state: dict[str, Any], judge_state: dict | None
) -> None:
    """The task sampler's cursor and (with GCD) the judge's state: golden rules, static-row cursor,
    external judge budget."""
    files.write_json_atomic(Path(folder) / SAMPLER_STATE_NAME, sampler_state)
    if judge_state is not None:
        files.write_json_atomic(Path(folder) / JUDGE_STATE_NAME, judge_state)


def load_sampler_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = Path(checkpoint) / SAMPLER_STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this checkpoint was not written by AgentGRPOTrainer, so the task "
            "sequence cannot be resumed"
        )
    return json.loads(path.read_text())


def load_judge_state(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(checkpoint) / JUDGE_STATE_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def save_optimizer(path: str | os.PathLike, optimizer: Any) -> None:
    """An extra optimizer's state (the critic's, the value head's), written atomically."""
    import torch

    state = optimizer.state_dict()
    files.write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_optimizer(path: str | os.PathLike, optimizer: Any, device: Any) -> None:
    import torch

    optimizer.load_state_dict(torch.load(path, map_location=device))


def without_tied_keys(model: Any, load_result: Any) -> Any:
    """Tied weights (lm_head = embed_tokens) are not saved, so a resumed checkpoint "misses" them; the model
    re-ties them. Returns the load result with only the other missing keys (worth a warning)."""
    tied = set(
        getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or ()
    )
    missing = [k for k in load_result.missing_keys if not any(k == t or k.endswith("." + t) for t in tied)]
    if len(missing) != len(load_result.missing_keys) and hasattr(load_result, "_replace"):
        model.tie_weights()
        load_result = load_result._replace(missing_keys=missing)
    return load_result
