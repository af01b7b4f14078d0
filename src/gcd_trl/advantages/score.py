"""Advantages of a file of step records (`gcd-trl advantages`): read JSONL keeping line numbers, compute
the advantage terms, and name the record (file:line) of any input the estimators cannot score: invalid
JSON, a step index out of range, or rewards so large the group statistics overflow.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

import numpy as np

from gcd_trl.advantages import compute_advantage_terms
from gcd_trl.advantages.common import AdvantageConfig, RecordError, records_to_batch

STEP_RANGE = 2**31  # step indices are episode step counts; far larger ones overflow GiGPO's sort key
REWARD_LIMIT = 1e150  # squares and sums of a group's rewards must stay finite (float64 ends near 1.8e308)


def read_records(stream: TextIO, name: str) -> tuple[list[dict[str, Any]], list[int]]:
    records, lines = [], []
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{name}:{lineno}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, int) and not isinstance(step, bool) and not 0 <= step < STEP_RANGE:
            raise ValueError(f"{name}:{lineno}: step {step} is out of range (0 <= step < 2**31)")
        records.append(record)
        lines.append(lineno)
    return records, lines


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
