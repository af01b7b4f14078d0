"""Checkpoints of an RL run: what the trainers add to a checkpoint folder, and which checkpoint a run can
resume from, decided before any model loads.

A checkpoint is complete when every file resuming reads would load: the weights (each safetensors file's
header and data all there), the optimizer and scheduler (torch zip archives with their central directory,
which a truncated file loses), `trainer_state.json` and our state files (JSON that parses; transformers
writes `trainer_state.json` in place, so a kill can leave half of it). These are structural checks, cheap
beside a real load (a 7B model's optimizer is ~56 GB). A kill while saving, a full disk or a deleted file
leaves an incomplete newest folder next to the previous complete one, and resuming falls back to that one
with a warning naming what was wrong; without the fallback Trainer would raise `SafetensorError` or
`JSONDecodeError` after the model loads, or, with `optimizer.pt` gone, silently restart the optimizer and
the learning-rate schedule.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from gcd_trl import files

SAMPLER_STATE_NAME = "task_sampler.json"
JUDGE_STATE_NAME = "gcd_state.json"
CHECKPOINT_FILES = ("trainer_state.json", SAMPLER_STATE_NAME)
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")
WEIGHT_INDEX = "model.safetensors.index.json"
TORCH_WEIGHT_FILES = ("pytorch_model.bin", "adapter_model.bin")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file would not load (a header or data cut short), or None. Reads only the header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes, no header)"
            (length,) = struct.unpack("<Q", head)
            if 8 + length > size:
                return f"{path.name} is truncated ({size} bytes, its header alone needs {8 + length})"
            header = json.loads(f.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"{path.name} does not load ({type(err).__name__}: {err})"
    if 8 + length + end > size:
        return f"{path.name} is truncated ({size} of {8 + length + end} bytes)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why a `torch.save` file would not load (not a zip archive with its central directory: truncated or
    never finished), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in archive.infolist()):
                return f"{path.name} is truncated"
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        return f"{path.name} does not load ({type(err).__name__}: {err})"
    return None


def json_problem(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"{path.name} does not load (half-written? {type(err).__name__}: {err})"
    return None if isinstance(data, dict) else f"{path.name} does not hold a JSON object"


def _weights_problem(folder: Path, sharded: bool) -> str | None:
    index = folder / WEIGHT_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            return f"{WEIGHT_INDEX} does not load ({type(err).__name__}: {err})"
        for shard in shards:
            if not (folder / shard).is_file():
                return f"no {shard} (named by {WEIGHT_INDEX})"
            if problem := safetensors_problem(folder / shard):
                return problem
        return None
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return safetensors_problem(folder / name)
    for name in TORCH_WEIGHT_FILES:
        if (folder / name).is_file():
            return torch_file_problem(folder / name)
    return None if sharded else f"no model weights ({WEIGHT_FILES[0]})"


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a checkpoint folder cannot be resumed (the file and what is wrong with it), or None when every
    file resuming reads would load. DeepSpeed and FSDP keep the weights and optimizer in their own layout
    (`latest` + `global_step*/`, `*_fsdp*`): there only what we and Trainer write ourselves is checked."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: no such checkpoint directory"
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"{folder} is incomplete: no {missing[0]} (killed while saving, or not written by gcd-trl)"
    sharded = (folder / "latest").is_file() or any(folder.glob("*fsdp*"))
    state_files = [*CHECKPOINT_FILES, *([JUDGE_STATE_NAME] if (folder / JUDGE_STATE_NAME).is_file() else [])]
    problems = [json_problem(folder / name) for name in state_files]
    problems.append(_weights_problem(folder, sharded))
    if not sharded:
        for name in ("optimizer.pt", "scheduler.pt"):
            path = folder / name
            problems.append(
                torch_file_problem(path)
                if path.is_file()
                else f"no {name} (the optimizer and learning-rate schedule would silently restart)"
            )
    problems += [torch_file_problem(p) for p in sorted(folder.glob("rng_state*.pth"))]
    problems = [p for p in problems if p is not None]
    return f"{folder} is incomplete: {problems[0]}" if problems else None


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
    warning naming the file and what is wrong; none at all starts fresh with a message); a path must be a complete checkpoint.
    Raises ValueError naming the problem.
    """
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.lower() in ("true", "last")):
        folder, skipped = find_resumable_checkpoint(output_dir)
        for why in skipped:
            print(f"gcd-trl: warning: skipping {why}", flush=True)
        if folder is None:
            print(f"gcd-trl: no complete checkpoint in {output_dir}: starting from scratch", flush=True)
        elif skipped:
            print(f"gcd-trl: resuming from {folder}, the newest complete checkpoint", flush=True)
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
