"""Step records as numpy columns, and the grouped statistics every estimator shares.

Records (one dict per env step, e.g. `StepRecord.to_dict()`) are turned into a `StepBatch` once; the
estimators are then pure vectorised functions of its arrays (a million steps in well under a second),
with no Python loop per step. Strings (group ids, trajectory ids, anchors, actions) are hashed to dense
int codes once, here; grouping is then `np.unique`/`np.bincount` over ints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any

import numpy as np

ESTIMATORS = ("grpo", "gigpo", "rlvmr", "gae")  # gae: PPO with a critic (gcd_trl.trainers.ppo; gae.py)
GRPO_FAMILY = ("grpo", "gigpo", "rlvmr")  # group-relative estimators (NTHR applies to these)
NORMS = ("mean_std", "mean")
GRPO_LEVELS = ("steps", "trajectories")
STEP_REWARDS = (
    "success",
    "dense",
)  # GiGPO step rewards: the success reward only, or the env's per-step reward
SUCCESS_REWARD = 10.0  # verl-agent / RLVMR: reward = 10 * won (env_package/*/envs.py compute_reward)
# Meta-reasoning tags (RLVMR). Code len(TAGS) ("none") marks a step without a valid tag.
TAGS = ("planning", "explore", "reflection", "monitor")
NO_TAG = len(TAGS)
EPSILON = 1e-6  # verl-agent / RLVMR: (x - mean) / (std + 1e-6)

# Record fields each estimator needs, beyond the common ones (group, traj, step, episode reward, validity).
NEEDS = {
    "grpo": (),
    "gigpo": ("anchor", "step_reward"),
    "rlvmr": ("tag", "action", "admissible"),
    "gae": (),
}


@dataclass(frozen=True)
class AdvantageConfig:
    """How advantages are computed. Defaults follow verl-agent's ALFWorld recipes."""

    estimator: str = "grpo"
    gamma: float = 0.95  # discount of GiGPO step returns (verl-agent default)
    omega: float = 1.0  # weight of the step-level advantage (GiGPO step_advantage_w, RLVMR's w)
    norm: str = "mean_std"  # "mean_std": (x-mean)/(std+eps), unbiased std; "mean": x-mean. Both levels.
    invalid_penalty: float = 0.1  # subtracted from an invalid step's scores (verl-agent's coef)
    similarity_threshold: float | None = None  # GiGPO: None or 1.0 = identical anchors only
    grpo_level: str = "steps"  # episode statistics over step samples (verl-agent) or trajectories
    epsilon: float = EPSILON
    planning_reward: float = 1.0  # RLVMR meta-reasoning rewards
    explore_reward: float = 1.0
    reflection_reward: float = 1.0
    reflection_at_first_step: bool = True  # RLVMR pays a first-step <reflection> (empty, invalid "previous")
    # Rewards derived from records that carry `won` / `env_reward` rather than explicit rewards:
    success_reward: float = SUCCESS_REWARD  # episode reward of a win
    step_reward: str = (
        "success"  # GiGPO: "success" = episode reward on the last step; "dense" = sr x env_reward
    )

    def __post_init__(self) -> None:
        """The one check of the advantage settings (the run config delegates here, naming its own keys)."""
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("norm", self.norm, NORMS)
        _choice("grpo_level", self.grpo_level, GRPO_LEVELS)
        _choice("step_reward", self.step_reward, STEP_REWARDS)
        if not self.success_reward > 0:
            raise AdvantageConfigError("success_reward", self.success_reward, "{field}={value} must be > 0")
        if not 0.0 <= self.gamma <= 1.0:
            raise AdvantageConfigError("gamma", self.gamma, "{field}={value} must lie in [0, 1]")
        if self.invalid_penalty < 0:
            raise AdvantageConfigError(
                "invalid_penalty", self.invalid_penalty, "{field}={value} must be >= 0.0"
            )
        if self.epsilon <= 0:
            raise AdvantageConfigError("epsilon", self.epsilon, "{field}={value} must be > 0")
        t = self.similarity_threshold
        if t is not None and not 0.0 < t <= 1.0:
            raise AdvantageConfigError(
                "similarity_threshold",
                t,
                "{field}={value} must lie in (0, 1] (or be None for identical anchors)",
            )
        if t is not None and t < 1.0 and self.estimator != "gigpo":
            raise AdvantageConfigError(
                "similarity_threshold",
                t,
                "{field} applies to {estimator}=gigpo only, not " + repr(self.estimator),
            )

    @classmethod
    def from_args(cls, args: Any) -> AdvantageConfig:
        """The config a run's AgentGRPOConfig (or `gcd-trl advantages` arguments) asks for: one mapping
        from the run's field names, so the trainer and the CLI cannot drift apart. Fields the object
        lacks keep their defaults (TRL's `epsilon`, the clip range, is not our normalisation epsilon)."""
        values = {ours: getattr(args, theirs) for ours, theirs in RUN_FIELDS.items() if hasattr(args, theirs)}
        return cls(**values)


# AdvantageConfig field -> the run config's (AgentGRPOConfig) field name.
RUN_FIELDS = {
    "estimator": "advantage_estimator",
    "gamma": "gamma",
    "omega": "omega",
    "norm": "step_adv_norm",
    "invalid_penalty": "invalid_penalty",
    "similarity_threshold": "similarity_threshold",
    "grpo_level": "grpo_level",
    "success_reward": "success_reward",
    "step_reward": "gigpo_step_reward",
    "reflection_at_first_step": "reflection_at_first_step",
}


@dataclass(frozen=True)
class Advantages:
    """Per-step results, aligned with the batch rows: total = episode + omega * step."""

    total: np.ndarray
    episode: np.ndarray
    step: np.ndarray  # zeros for GRPO
    step_signal: np.ndarray  # what the step level normalised: GiGPO return, RLVMR MR reward (GRPO: zeros)


class RecordError(ValueError):
    """A bad step record: `index` is its 0-based position in the input, `field` the offending key."""

    def __init__(self, index: int, field: str, problem: str):
        self.index, self.field, self.problem = index, field, problem
        super().__init__(f"record {index}: {problem}")


class AdvantageConfigError(ValueError):
    """An impossible advantage setting: `field` (an AdvantageConfig field), its `value`, and the `problem` as
    a template naming fields in braces ({field}, {value}, other fields), so the run config can name its
    own keys (`render`)."""

    def __init__(self, field: str, value: Any, problem: str):
        self.field, self.value, self.problem = field, value, problem
        super().__init__(self.render())

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message, with each field called what `names` maps it to (default: its own name)."""
        names = dict(names or {})

        class _Names(dict):
            def __missing__(self, key: str) -> str:
                return names.get(key, key)

        return self.problem.format_map(
            _Names(field=names.get(self.field, self.field), value=repr(self.value))
        )


def _choice(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise AdvantageConfigError(
            name, value, "{field}={value} is not one of " + ", ".join(map(repr, options))
        )


def factorize(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, Sequence[Any]]:
    """Dense int64 codes in order of first appearance, and the distinct values (hashed once).

    Small non-negative ints are ranked with a lookup table, other numbers with np.unique (the values come
    back as an array); anything else goes through a dict (C-speed `dict.fromkeys`, one lookup per value).
    """
    n = len(values)
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        if values.dtype.kind in "biu" and n and values.min() >= 0 and values.max() < 4 * n + 1024:
            v = values.astype(np.int64, copy=False)
            first = np.full(int(v.max()) + 1, n, dtype=np.int64)
            np.minimum.at(first, v, np.arange(n))
            present = np.flatnonzero(first < n)
            seen = present[np.argsort(first[present], kind="stable")]
            rank = np.empty(len(first), dtype=np.int64)
            rank[seen] = np.arange(len(seen))
            return rank[v], seen
        uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        seen_order = np.argsort(first, kind="stable")
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[seen_order] = np.arange(len(uniq))
        return rank[inverse.reshape(-1)], uniq[seen_order]
    table: dict[Any, int] = dict.fromkeys(values)  # keeps first-appearance order
    for i, key in enumerate(table):
        table[key] = i
    return np.fromiter(map(table.__getitem__, values), dtype=np.int64, count=n), list(table)


def dense_keys(*codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Combine non-negative int code columns into one dense key 0..K-1 (in sorted order of the tuples)."""
    key = codes[0].astype(np.int64, copy=True)
    span = int(key.max(initial=0)) + 1
    for c in codes[1:]:
        width = int(c.max(initial=0)) + 1
        key = key * width + c
        span *= width
    if span <= 4 * len(key) + 1024:  # small range: a presence table instead of a sort
        present = np.bincount(key, minlength=span) > 0
        remap = np.cumsum(present) - 1
        return remap[key], int(present.sum())
    uniq, inverse = np.unique(key, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64, copy=False), len(uniq)


def group_stats(
    keys: np.ndarray, x: np.ndarray, n_keys: int, *, singleton: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-key (count, mean, unbiased std) of x. Keys must be dense ints in [0, n_keys).

    `singleton` says what a key with one sample gets, as the references differ:
      "zero": mean = the value, std = 1 -> advantage 0 (verl-agent's GiGPO step groups);
      "raw":  mean = 0, std = 1 -> the raw value passes through (verl-agent's episode groups, RLVMR tags).
    Std is Bessel-corrected (torch.std's default, which verl-agent and RLVMR use); two-pass for accuracy.
    """
    counts = np.bincount(keys, minlength=n_keys)
    mean = np.bincount(keys, weights=x, minlength=n_keys) / np.maximum(counts, 1)
    dev = x - mean[keys]
    ss = np.bincount(keys, weights=dev * dev, minlength=n_keys)
    std = np.sqrt(ss / np.maximum(counts - 1, 1))
    single = counts == 1
    std[single] = 1.0
    if singleton == "raw":
        mean[single] = 0.0
    elif singleton != "zero":
        raise ValueError(f"singleton={singleton!r} must be 'zero' or 'raw'")
    return counts, mean, std


def normalize(x: np.ndarray, keys: np.ndarray, mean: np.ndarray, std: np.ndarray, norm: str, epsilon: float):
    """Apply per-key statistics: (x - mean) / (std + eps) or x - mean."""
    centred = x - mean[keys]
    if norm == "mean":
        return centred
    return centred / (std[keys] + epsilon)


def normalize_in_groups(
    x: np.ndarray, keys: np.ndarray, n_keys: int, *, norm: str, epsilon: float, singleton: str
) -> np.ndarray:
    _, mean, std = group_stats(keys, x, n_keys, singleton=singleton)
    return normalize(x, keys, mean, std, norm, epsilon)


@dataclass(eq=False)
class StepBatch:
    """One row per env step, as numpy columns. Build with `from_columns` or `records_to_batch`.

    Codes: `group` and `traj` are dense ints (`traj` is unique over (group, traj) pairs, numbered in
    order of first appearance); `anchor`/`action` index `anchor_values`/`action_values`; `tag` indexes
    TAGS (NO_TAG: none). Optional columns are None when the records did not carry them.
    """

    group: np.ndarray
    traj: np.ndarray
    step: np.ndarray
    episode_reward: np.ndarray
    step_reward: np.ndarray
    invalid: np.ndarray
    anchor: np.ndarray | None = None
    tag: np.ndarray | None = None
    action: np.ndarray | None = None
    anchor_values: Sequence[Any] = field(default_factory=list)
    action_values: Sequence[Any] = field(default_factory=list)
    inadmissible: np.ndarray | None = None  # valid step whose action was not admissible (sent anyway)

    @classmethod
    def from_columns(
        cls,
        *,
        group: Sequence[Any] | np.ndarray,
        traj: Sequence[Any] | np.ndarray,
        step: Sequence[int] | np.ndarray,
        episode_reward: Sequence[float] | np.ndarray,
        invalid: Sequence[bool] | np.ndarray,
        step_reward: Sequence[float] | np.ndarray | None = None,
        anchor: Sequence[Any] | np.ndarray | None = None,
        tag: Sequence[str | None] | np.ndarray | None = None,
        action: Sequence[Any] | np.ndarray | None = None,
        inadmissible: Sequence[bool] | np.ndarray | None = None,
    ) -> StepBatch:
        """Hash ids/strings to codes and check the columns (equal lengths, one row per (traj, step))."""
        n = len(step)
        for name, col in (
            ("group", group),
            ("traj", traj),
            ("episode_reward", episode_reward),
            ("invalid", invalid),
            ("step_reward", step_reward),
            ("anchor", anchor),
            ("tag", tag),
            ("action", action),
            ("inadmissible", inadmissible),
        ):
            if col is not None and len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows, column 'step' has {n}")
        group_codes, _ = factorize(group)
        traj_codes, _ = factorize(traj)
        # A trajectory id need only be unique inside its group: number (group, traj) pairs in first-seen
        # order, unless the ids are unique across groups already.
        owner = np.full(int(traj_codes.max(initial=-1)) + 1, -1, dtype=np.int64)
        owner[traj_codes] = group_codes
        if not np.array_equal(owner[traj_codes], group_codes):
            traj_codes, _ = factorize(group_codes * (int(traj_codes.max()) + 1) + traj_codes)
        anchor_codes, anchor_values = (None, []) if anchor is None else factorize(anchor)
        action_codes, action_values = (None, []) if action is None else factorize(action)
        batch = cls(
            group=group_codes,
            traj=traj_codes,
            step=np.asarray(step, dtype=np.int64),
            episode_reward=np.asarray(episode_reward, dtype=np.float64),
            step_reward=(np.zeros(n) if step_reward is None else np.asarray(step_reward, dtype=np.float64)),
            invalid=np.asarray(invalid, dtype=bool),
            anchor=anchor_codes,
            tag=None if tag is None else tag_codes(tag),
            action=action_codes,
            anchor_values=anchor_values,
            action_values=action_values,
            inadmissible=None if inadmissible is None else np.asarray(inadmissible, dtype=bool),
        )
        batch.check()
        return batch

    def __len__(self) -> int:
        return len(self.step)

    def check(self) -> None:
        """Raise ValueError on inputs the estimators cannot make sense of."""
        for name in ("episode_reward", "step_reward"):
            bad = np.flatnonzero(~np.isfinite(getattr(self, name)))
            if len(bad):
                raise RecordError(int(bad[0]), name, f"{name} is not a finite number")
        o = self.order
        t, s = self.traj[o], self.step[o]
        dup = np.flatnonzero((t[1:] == t[:-1]) & (s[1:] == s[:-1]))
        if len(dup):
            i = int(o[dup[0] + 1])
            raise RecordError(i, "step", f"trajectory has two records with step {int(self.step[i])}")
        ep = self.episode_reward[o]
        differs = np.flatnonzero((t[1:] == t[:-1]) & (ep[1:] != ep[:-1]))
        if len(differs):
            i = int(o[differs[0] + 1])
            raise RecordError(i, "episode_reward", "episode_reward differs between steps of one trajectory")

    @cached_property
    def order(self) -> np.ndarray:
        """Row order by (trajectory, step): verl-agent's batch order (trajectory-major)."""
        if not len(self.step):
            return np.zeros(0, dtype=np.int64)
        low = int(self.step.min())
        key = self.traj * (int(self.step.max()) - low + 1) + (self.step - low)
        if np.all(key[1:] > key[:-1]):
            return np.arange(len(key))  # already in order (the usual case for rollout output)
        return np.argsort(key, kind="stable")

    @cached_property
    def first_in_traj(self) -> np.ndarray:
        """Per row: is it its trajectory's first step?"""
        o = self.order
        t = self.traj[o]
        first = np.empty(len(o), dtype=bool)
        first[o] = np.r_[True, t[1:] != t[:-1]] if len(o) else np.zeros(0, dtype=bool)
        return first

    @cached_property
    def last_in_traj(self) -> np.ndarray:
        """Per row: is it its trajectory's last step (of those in the batch)?"""
        o = self.order
        t = self.traj[o]
        last = np.empty(len(o), dtype=bool)
        last[o] = np.r_[t[1:] != t[:-1], True] if len(o) else np.zeros(0, dtype=bool)
        return last

    @cached_property
    def n_groups(self) -> int:
        return int(self.group.max(initial=-1)) + 1


def tag_codes(tags: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """Map tags ("planning", "<planning>", "Planning", None, "") to codes into TAGS; others -> ValueError."""
    codes, values = factorize(list(tags) if isinstance(tags, np.ndarray) else tags)
    table = np.empty(len(values), dtype=np.int8)
    for i, v in enumerate(values):
        name = _tag_name(v)
        if name is None:
            raise RecordError(
                int(np.argmax(codes == i)), "tag", f"unknown tag {v!r} (expected one of {TAGS})"
            )
        table[i] = name
    return table[codes]


def _tag_name(value: Any) -> int | None:
    if value is None:
        return NO_TAG
    if not isinstance(value, str):
        return None
    name = value.strip().strip("<>/").strip().lower()
    if name in ("", "none"):
        return NO_TAG
    return TAGS.index(name) if name in TAGS else None


# --------------------------------------------------------------------------- records -> batch


def _column(records: Sequence[Mapping[str, Any]], keys: tuple[str, ...], need: bool, why: str) -> list | None:
    """Per record, the value of the first of `keys` it has. When some record has none of them: None if not
    `need`, else RecordError naming that record."""
    try:
        return list(map(itemgetter(keys[0]), records))
    except KeyError:
        pass
    except TypeError as err:
        bad = next(i for i, r in enumerate(records) if not isinstance(r, Mapping))
        raise RecordError(
            bad, "", f"a record must be a JSON object, got {type(records[bad]).__name__}"
        ) from err
    if not need and not all(any(k in r for k in keys) for r in records):
        return None
    out = []
    for i, r in enumerate(records):
        for k in keys:
            if k in r:
                out.append(r[k])
                break
        else:
            alts = " or ".join(repr(k) for k in keys)
            raise RecordError(i, keys[0], f"missing field {alts}{why}")
    return out


def _invalid_flags(records: Sequence[Mapping[str, Any]]) -> list:
    """`invalid`, or else `not valid`, per record (bools or 0/1 ints)."""
    try:
        flags = list(map(itemgetter("invalid"), records))
        _check_types(flags, "invalid", (bool, int))
        return flags
    except KeyError:
        _column(records, ("invalid", "valid"), True, "")  # names the first record with neither
    flags = []
    for i, r in enumerate(records):
        key = "invalid" if "invalid" in r else "valid"
        v = r[key]
        if type(v) not in (bool, int):
            raise RecordError(i, key, f"field {key!r} must be bool, got {v!r}")
        flags.append(bool(v) if key == "invalid" else not v)
    return flags


def _check_types(values: list, name: str, kinds: tuple[type, ...]) -> None:
    """Exact JSON types (so "1.0" or true is no reward), checked in one pass over the distinct types."""
    if set(map(type, values)) <= set(kinds):
        return
    i = next(i for i, v in enumerate(values) if type(v) not in kinds)
    want = " or ".join(k.__name__ for k in kinds)
    raise RecordError(i, name, f"field {name!r} must be {want}, got {values[i]!r}")


def records_to_batch(
    records: Iterable[Mapping[str, Any]],
    estimator: str | None = None,
    *,
    config: AdvantageConfig | None = None,
) -> StepBatch:
    """Build a StepBatch from step dicts (`group, traj, step, anchor, episode_reward, step_reward,
    invalid, tag, action`; `StepRecord.to_dict()` works too).

    - validity: `invalid` or else `valid` (negated); `admissible: false` on a valid step marks an action
      sent to the env although not admissible (RLVMR's reflection rule counts it as a failed step);
    - episode reward: `episode_reward`, or else `success_reward` if any step of the trajectory has `won`
      true, else 0.0 (verl-agent and RLVMR pay 10 * won);
    - step reward (gigpo): `step_reward` where a record has it, else by `step_reward` mode: "success" puts
      the episode reward on the trajectory's last step and 0 elsewhere (the references' env reward is
      10 * won, paid when the episode ends); "dense" uses `success_reward * env_reward` (ScienceWorld: the
      score delta / 100, so a full score pays what a win pays);
    - action (rlvmr): `raw_action` (the text written in the action block; RLVMR compares raw text) where a
      record has it, else `action`;
    - `config` (default `AdvantageConfig()`) gives `success_reward` and `step_reward`; `estimator` (default
      the config's, if a config is given) decides which optional fields are read and required (gigpo:
      anchor and a step reward; rlvmr: tag and action); with neither, each is read when every record has it.
    Raises RecordError (a ValueError) naming the record index and the field.
    """
    records = records if isinstance(records, Sequence) else list(records)
    if estimator is None and config is not None:
        estimator = config.estimator
    config = config or AdvantageConfig(estimator=estimator or "grpo")
    if estimator is not None:
        _choice("estimator", estimator, ESTIMATORS)
    needs = NEEDS.get(estimator, ())
    why = f" (needed by estimator {estimator})" if estimator else ""
    group = _column(records, ("group",), True, "")
    traj = _column(records, ("traj",), True, "")
    step = _column(records, ("step",), True, "")
    _check_types(group, "group", (str, int))
    _check_types(traj, "traj", (str, int))
    _check_types(step, "step", (int,))
    invalid = _invalid_flags(records)

    episode = _episode_rewards(records, group, traj, config.success_reward)

    def optional(name: str, keys: tuple[str, ...], required: bool | None = None) -> list | None:
        if estimator is not None and name not in needs:
            return None  # not read, so not checked
        return _column(records, keys, name in needs if required is None else required, why)

    explicit_steps: list | None = None
    derived_steps: np.ndarray | None = None
    if estimator is None or "step_reward" in needs:
        if config.step_reward == "dense":
            explicit_steps = optional("step_reward", ("step_reward", "env_reward"))
            if explicit_steps is not None:
                _check_types(explicit_steps, "step_reward", (int, float))
                scale = [1.0 if "step_reward" in r else config.success_reward for r in records]
                explicit_steps = [v * k for v, k in zip(explicit_steps, scale)]
        else:
            explicit_steps = [r.get("step_reward") for r in records]
            _check_types(explicit_steps, "step_reward", (int, float, type(None)))
            derived_steps = np.zeros(len(records))  # filled once trajectories are known
    anchor = optional("anchor", ("anchor",))
    if anchor is not None:
        _check_types(anchor, "anchor", (str,))
    tag = optional("tag", ("tag",))
    action = optional("action", ("raw_action", "action"))
    if action is not None:
        _check_types(action, "action", (str, type(None)))
    admissible = optional("admissible", ("admissible",), required=False)
    if admissible is None and estimator == "rlvmr":
        admissible = [r.get("admissible") for r in records]
    if admissible is not None:
        _check_types(admissible, "admissible", (bool, type(None)))
    invalid_arr = np.asarray(invalid, dtype=bool)
    batch = StepBatch.from_columns(
        group=group,
        traj=traj,
        step=np.asarray(step, dtype=np.int64),
        episode_reward=episode,
        invalid=invalid_arr,
        step_reward=None if derived_steps is not None or explicit_steps is None else explicit_steps,
        anchor=anchor,
        tag=tag,
        action=action,
        inadmissible=None
        if admissible is None
        else ~invalid_arr & np.array([a is False for a in admissible], dtype=bool),
    )
    if derived_steps is not None:
        derived = np.where(batch.last_in_traj, batch.episode_reward, 0.0)
        given = np.array([v is not None for v in explicit_steps], dtype=bool)
        derived[given] = np.asarray([v for v in explicit_steps if v is not None], dtype=np.float64)
        if not np.all(np.isfinite(derived)):
            bad = int(np.flatnonzero(~np.isfinite(derived))[0])
            raise RecordError(bad, "step_reward", "step_reward is not a finite number")
        batch.step_reward = derived
    return batch


def _episode_rewards(
    records: Sequence[Mapping[str, Any]], group: list, traj: list, success_reward: float
) -> np.ndarray:
    try:
        values = list(map(itemgetter("episode_reward"), records))
        _check_types(values, "episode_reward", (int, float))
        return np.asarray(values, dtype=np.float64)
    except KeyError:
        pass
    out = np.full(len(records), np.nan)
    won = np.zeros(len(records), dtype=bool)
    for i, r in enumerate(records):
        if "episode_reward" in r:
            v = r["episode_reward"]
            if type(v) not in (int, float):
                raise RecordError(i, "episode_reward", f"field 'episode_reward' must be a number, got {v!r}")
            out[i] = v
        elif "won" in r:
            won[i] = bool(r["won"])
        else:
            raise RecordError(i, "episode_reward", "missing field 'episode_reward' (or 'won' to derive it)")
    pair_codes, _ = factorize(list(zip(group, traj)))
    traj_won = np.zeros(int(pair_codes.max(initial=-1)) + 1, dtype=bool)
    np.logical_or.at(traj_won, pair_codes, won)
    missing = np.isnan(out)
    out[missing] = success_reward * traj_won[pair_codes[missing]].astype(np.float64)
    return out
