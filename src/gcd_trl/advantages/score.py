"""Advantages of a file of step records (`gcd-trl advantages`): read JSONL keeping line numbers (step files
and eval episode files alike), compute the advantage terms, and name the record (file:line) of any input
the estimators cannot score: invalid JSON, NaN or Infinity, a field of the wrong type, a step index out of
range, or rewards so large the group statistics overflow.
"""

from __future__ import annotations

import json
import math
from typing import Any, TextIO

import numpy as np

from gcd_trl.advantages import compute_advantage_terms
from gcd_trl.advantages.common import AdvantageConfig, RecordError, records_to_batch
from gcd_trl.rollout.records import check_field_types, episode_steps

STEP_RANGE = 2**31  # step indices are episode step counts; far larger ones overflow GiGPO's sort key
REWARD_LIMIT = 1e150  # squares and sums of a group's rewards must stay finite (float64 ends near 1.8e308)


def read_records(stream: TextIO, name: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Step records and their line numbers. Step files hold one record a line; an eval `episodes.jsonl` line
    holds an episode whose `trajectory` lists its steps: they are read alike, each episode a trajectory of
    the group of its task (eval's own group and traj count positions in a batch, not tasks). Every schema
    field a record holds must have its type (`rollout.records`), and NaN / Infinity are refused, naming
    the file, line and field."""
    records, lines = [], []
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        bad = non_finite_field(record)
        if bad is not None:
            raise ValueError(
                f"{where}: {bad[0]} is {bad[1]}, not a finite number (NaN and Infinity are not JSON)"
            )
        if isinstance(record, dict) and "trajectory" in record:
            steps = episode_steps(record, where, check_field_types)
            for rec in steps:
                rec["group"] = record.get("task", rec.get("group"))
                rec["traj"] = lineno
        else:
            steps = [check_field_types(record, where)]
        for rec in steps:
            step = rec.get("step")
            if isinstance(step, int) and not isinstance(step, bool) and not 0 <= step < STEP_RANGE:
                raise ValueError(f"{where}: step {step} is out of range (0 <= step < 2**31)")
            records.append(rec)
            lines.append(lineno)
    return records, lines


def non_finite_field(value: Any, path: str = "") -> tuple[str, float] | None:
    """The first NaN or infinite number in a parsed JSON value: (its field path, the number), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "the record", value
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = non_finite_field(item, where)
        if found is not None:
            return found
    return None


def check_magnitudes(batch: Any, lines: list[int], name: str) -> None:
    """Rewards beyond +-1e150 overflow the group statistics (the std of 1e308 and -1e308 is inf, which
    silently turns every advantage into 0): refuse them, naming the record."""
    for label, values in (("episode_reward", batch.episode_reward), ("step_reward", batch.step_reward)):
        big = np.flatnonzero(np.abs(np.asarray(values, dtype=np.float64)) > REWARD_LIMIT)
        if len(big):
            i = int(big[0])
            raise ValueError(
                f"{name}:{lines[i]}: {label} {float(values[i]):.3g} is too large to normalise "
                f"(|reward| must be <= {REWARD_LIMIT:.0e}); rescale the rewards"
            )


def check_finite(terms: Any, records: list[dict[str, Any]], lines: list[int], name: str) -> None:
    """Huge rewards overflow the group statistics (e.g. 1e308 squared): refuse rather than write NaN."""
    for label, values in (("advantage", terms.total), ("episode_advantage", terms.episode)):
        bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
        if len(bad):
            i = int(bad[0])
            rewards = [
                abs(r["episode_reward"]) for r in records if isinstance(r.get("episode_reward"), int | float)
            ]
            biggest = f" (largest |episode_reward|: {max(rewards):.3g})" if rewards else ""
            raise ValueError(
                f"{name}:{lines[i]}: the {label} is not a finite number: the rewards are too large to "
                f"normalise{biggest}; rescale them"
            )
    bad = np.flatnonzero(~np.isfinite(np.asarray(terms.step, dtype=np.float64)))
    if len(bad):
        raise ValueError(
            f"{name}:{lines[int(bad[0])]}: the step_advantage is not a finite number; rescale the rewards"
        )


def score_records(
    records: list[dict[str, Any]], lines: list[int], name: str, config: AdvantageConfig
) -> None:
    """Add `advantage`, `episode_advantage` and `step_advantage` to every record (in place). ValueError names
    the file and line of a record that cannot be scored."""
    try:
        batch = records_to_batch(records, config=config)
        check_magnitudes(batch, lines, name)
        with np.errstate(all="ignore"):
            terms = compute_advantage_terms(batch, config)
    except RecordError as err:
        raise ValueError(f"{name}:{lines[err.index]}: {err.problem}") from None
    except OverflowError as err:
        raise ValueError(f"{name}: a number is too large ({err})") from None
    check_finite(terms, records, lines, name)
    for record, total, ep, step in zip(
        records, terms.total.tolist(), terms.episode.tolist(), terms.step.tolist()
    ):
        record.update(advantage=total, episode_advantage=ep, step_advantage=step)
