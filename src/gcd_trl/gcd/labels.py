"""Step labels for the judge task: 1 good, 0 bad, None unlabelled (paper §4.1).

The rules, on one trajectory's step records sorted by `step`:
- **bad (0)**: the state the step's action was taken in comes back at a later step of the same
  trajectory. The compared key is each record's `state`: the env's identity of the state the action was
  taken in (ALFWorld: a digest of the engine's facts; ScienceWorld: the objects in reach, the score and
  the observation). The raw observation is not enough: "Nothing happens." is said in many states, so two
  of them would collide and a step that made progress between them would be labelled bad. Records
  without `state` (written before it existed) fall back to `anchor`, the raw observation. If the same
  state recurs at step t' > t, the actions t..t'-1 led back to where step t started: step t made no
  progress (it may be useless, as the paper puts it). An invalid output leaves the env where it was, so
  the next step has the same state and the invalid step is bad.
- **good (1)**: the last step of a successful trajectory (its `won` flag is set): it finished the task.
- otherwise unlabelled (None). The two rules cannot clash: nothing comes after the last step.

`label_records` applies the rules to a whole file's records (any order, many trajectories) and, when
given, overlays external-judge labels (see `gcd_trl.gcd.external`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gcd_trl.rollout.records import group_trajectories

GOOD, BAD = 1, 0
SOURCES = ("rule", "external", "none")


def state_of(record: Mapping[str, Any]) -> str:
    """The key the loop rule compares: the record's `state`, else (older records) its `anchor`."""
    state = record.get("state")
    return f"state:{state}" if state is not None else f"anchor:{record['anchor']}"


def rule_labels(trajectory: Sequence[Mapping[str, Any]]) -> list[int | None]:
    """Labels for one episode's step records, sorted by step: 0 bad, 1 good, None unlabelled."""
    steps = [int(r["step"]) for r in trajectory]
    if steps != sorted(steps) or len(set(steps)) != len(steps):
        raise ValueError(f"rule_labels: steps must be sorted and distinct, got {steps}")
    keys = [state_of(r) for r in trajectory]
    last_seen = {key: i for i, key in enumerate(keys)}
    labels: list[int | None] = [BAD if last_seen[key] > i else None for i, key in enumerate(keys)]
    if trajectory and bool(trajectory[-1].get("won", False)):
        labels[-1] = GOOD
    return labels


def _key(record: Mapping[str, Any]) -> tuple:
    return (record.get("round"), record.get("task"), record["group"], record["traj"], record["step"])


def label_records(
    records: Iterable[Mapping[str, Any]],
    external: Mapping[tuple, Mapping[str, Any]] | None = None,
    mode: str = "rules",
    *,
    ruled: bool = False,
) -> list[dict]:
    """The records, in their order, with `label` (0, 1 or None) and `label_source` added.

    `mode`: "rules" (rules only), "external" (external labels only; where the external judge failed, the
    rules stand in), "both" (rules, overridden by an external label where one exists). `external` maps
    `record_key(record)` to a result with `label` (0, 1 or None: the votes did not agree), optional
    `critiques` (copied to the record) and `failed` (True: no answer, fall back to the rules).
    Judge-kind records pass through unchanged. `ruled`: the records already carry their rule labels in
    `label` (the trainer labels a round's steps once), so the rules are not applied again.
    """
    if mode not in ("rules", "external", "both"):
        raise ValueError(f"label mode {mode!r} is not one of 'rules', 'external', 'both'")
    records = [dict(r) for r in records]
    rules: dict[tuple, int | None] = {}
    if ruled:
        rules = {_key(r): r.get("label") for r in records}
    else:
        for steps in group_trajectories(records).values():
            for r, label in zip(steps, rule_labels(steps)):
                rules[_key(r)] = label
    external = external or {}
    for r in records:
        if r.get("kind", "agent") != "agent":
            continue
        key = _key(r)
        rule = rules.get(key)
        result = external.get(key)
        label, source = None, "none"
        if mode in ("rules", "both") and rule is not None:
            label, source = rule, "rule"
        if result is not None and not result.get("failed") and mode in ("external", "both"):
            if result.get("label") is not None:
                label, source = int(result["label"]), "external"
            elif mode == "external":
                label, source = None, "none"
        elif result is not None and result.get("failed") and mode == "external" and rule is not None:
            label, source = rule, "rule"  # the judge gave no answer: the rules stand in
        if result is not None and result.get("critiques"):
            r["critiques"] = list(result["critiques"])
        r["label"], r["label_source"] = label, source
    return records


def record_key(record: Mapping[str, Any]) -> tuple:
    """The identity of a step record across a run: (round, task, group, traj, step)."""
    return _key(record)


def label_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many agent steps are good, bad, unlabelled, and by which source."""
    out = {"steps": 0, "good": 0, "bad": 0, "unlabelled": 0, "rule": 0, "external": 0}
    for r in records:
        if r.get("kind", "agent") != "agent":
            continue
        out["steps"] += 1
        label = r.get("label")
        out["good" if label == GOOD else "bad" if label == BAD else "unlabelled"] += 1
        if label is not None and r.get("label_source") in ("rule", "external"):
            out[r["label_source"]] += 1
    return out
