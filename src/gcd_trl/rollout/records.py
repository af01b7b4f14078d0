"""The step-record file format, in one place: what the trainer writes, what eval writes, what
`gcd-trl advantages`, `gcd-trl judge` and the analyses read.

Two JSONL layouts hold step records:
- **step files** (`output_dir/rollouts/round_00012_rank0.jsonl`): one step record per line;
- **episode files** (an eval directory's `episodes.jsonl`): one episode per line, its steps in
  `trajectory` (a list of step records), plus episode fields (`task`, `won`, `steps`, ...).

A step record (`StepRecord.to_dict()` plus what the writer adds):

| field | type | meaning |
| --- | --- | --- |
| group, traj, step | int | which task group, which episode of the group, which step (from 0) |
| anchor | str | the raw env observation of the state the action was taken in (GiGPO's key) |
| state | str or null | the env's key of that state (ALFWorld: a digest of the engine's facts): the judge's loop rule compares it (null: older records, the anchor stands in) |
| prompt, completion | str | the user message and the model's full answer |
| action | str or null | what the env received (null: invalid output, env not stepped) |
| valid | bool | the output is well-formed (a format error is invalid) |
| reason | str or null | why it was invalid |
| admissible | bool or null | the action was on the admissible list (false: sent anyway; null: unknown) |
| raw_action | str or null | the text inside the action block as written (RLVMR compares this) |
| tag | str or null | RLVMR meta-reasoning tag |
| env_reward | float | the env's reward for this step |
| done, won | bool | the episode ended after this step / the env's success flag after it |
| kind | str | "agent" (default when absent) or "judge" (a GCD judge sample) |
| advantage | float | (rollouts) the advantage the trainer used |
| round | int | (rollouts) the round the step was played in |
| truncated | bool | (rollouts) the completion hit max_completion_length |
| task | str | (eval, optional in rollouts) the task key |
| label, label_source | int or null, str | (GCD) step label: 1 good, 0 bad, null unlabelled; rule / external / none |

`read_steps` accepts either layout (and a directory of step files) and checks the required fields,
naming the file, line and field of the first problem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gcd_trl import files

REQUIRED_STEP_FIELDS: dict[str, tuple[type, ...]] = {
    "group": (int, str),
    "traj": (int, str),
    "step": (int,),
    "anchor": (str,),
    "prompt": (str,),
    "completion": (str,),
    "valid": (bool,),
}
OPTIONAL_STEP_FIELDS: dict[str, tuple[type, ...]] = {
    "action": (str, type(None)),
    "reason": (str, type(None)),
    "admissible": (bool, type(None)),
    "raw_action": (str, type(None)),
    "state": (str, type(None)),
    "tag": (str, type(None)),
    "env_reward": (int, float),
    "done": (bool,),
    "won": (bool,),
    "kind": (str,),
    "advantage": (int, float),
    "round": (int,),
    "truncated": (bool,),
    "task": (str,),
    "label": (int, type(None)),
    "label_source": (str,),
}
KINDS = ("agent", "judge")


class RecordFileError(ValueError):
    """A step-record file that cannot be read: names the file, the line and the field."""


def check_field_types(record: Any, where: str) -> dict[str, Any]:
    """Return `record` if every schema field it holds has its type (fields may be missing: `gcd-trl
    advantages` reads partial records), else raise RecordFileError naming `where` and the field."""
    if not isinstance(record, Mapping):
        raise RecordFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, kinds in (REQUIRED_STEP_FIELDS | OPTIONAL_STEP_FIELDS).items():
        if name in record and type(record[name]) not in kinds:
            raise RecordFileError(f"{where}: field {name!r} has the wrong type ({record[name]!r})")
    if record.get("kind", "agent") not in KINDS:
        raise RecordFileError(f"{where}: field 'kind' must be one of {KINDS}, got {record['kind']!r}")
    return dict(record)


def check_step(record: Any, where: str) -> dict[str, Any]:
    """Return `record` if it is a valid step record, else raise RecordFileError naming `where` and the field."""
    if isinstance(record, Mapping):
        for name in REQUIRED_STEP_FIELDS:
            if name not in record:
                raise RecordFileError(f"{where}: missing field {name!r}")
    return check_field_types(record, where)


def episode_steps(
    line: Mapping[str, Any], where: str, check: Callable[[Any, str], dict[str, Any]] = check_step
) -> list[dict[str, Any]]:
    """The step records of an episode line (its `trajectory`), each checked by `check`; the episode's `task`
    and `won` are copied to steps that lack them."""
    steps = line["trajectory"]
    if not isinstance(steps, list):
        raise RecordFileError(f"{where}: field 'trajectory' must be a list")
    out = []
    for i, step in enumerate(steps):
        rec = check(step, f"{where} trajectory[{i}]")
        for key in ("task", "won"):
            if key in line and key not in rec:
                rec[key] = line[key]
        out.append(rec)
    return out


def _lines(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise RecordFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RecordFileError(f"{path}: is a directory") from None
    with handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None


def step_files(path: str | os.PathLike) -> list[Path]:
    """The JSONL files a path names: the file itself, or every *.jsonl under a directory (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.jsonl"))
        if not files:
            raise RecordFileError(f"{path}: directory holds no .jsonl step-record files")
        return files
    if not path.exists():
        raise RecordFileError(f"{path}: no such file")
    return [path]


def read_steps(paths: str | os.PathLike | Iterable[str | os.PathLike], kind: str | None = None) -> list[dict]:
    """Every step record in the given files/directories, in file order.

    Episode lines (with a `trajectory` list) are flattened; their `task` and `won` are copied to steps
    that lack them. `kind` keeps only records of that kind ("agent" or "judge").
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    out: list[dict] = []
    for given in paths:
        for path in step_files(given):
            for lineno, obj in _lines(path):
                where = f"{path}:{lineno}"
                if isinstance(obj, Mapping) and "trajectory" in obj:
                    out.extend(episode_steps(obj, where))
                else:
                    out.append(check_step(obj, where))
    if kind is not None:
        out = [r for r in out if r.get("kind", "agent") == kind]
    return out


def group_trajectories(records: Iterable[Mapping[str, Any]]) -> dict[tuple, list[dict]]:
    """Agent step records by trajectory: key (round, task, group, traj) -> steps sorted by `step`."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("kind", "agent") != "agent":
            continue
        key = (r.get("round"), r.get("task"), r["group"], r["traj"])
        out.setdefault(key, []).append(dict(r))
    for steps in out.values():
        steps.sort(key=lambda s: s["step"])
    return out


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSONL atomically (`gcd_trl.files`): a kill never leaves a half-written file. The folder
    is created; a path that is a directory is refused."""
    if Path(path).is_dir():
        raise RecordFileError(f"{path}: is a directory; give a file path")
    return files.write_jsonl_atomic(path, rows)
