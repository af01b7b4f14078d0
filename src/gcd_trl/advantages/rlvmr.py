"""RLVMR (Zhang et al. 2025): GRPO's episode advantage plus verifiable meta-reasoning (MR) rewards.

Each step carries one tag. The MR reward of a step, following RLVMR's `process_trajectory_rlvmr_rewards`
(rlvmr/core_rlvmr.py), with actions compared as the raw text written in the action block (RLVMR compares
`re.findall(r'<action>(.*?)</action>', output)`; records give `raw_action`, else `action`):
- <planning>: `planning_reward` (1) when the episode succeeds (episode_reward > 0);
- <explore>: `explore_reward` (1) when no earlier *valid* step of the trajectory wrote the same action;
- <reflection>: `reflection_reward` (1) when the previous step failed (invalid, or valid but not admissible:
  RLVMR's `is_action_valid and action_available`) and this action differs from the previous step's; at a
  trajectory's first step RLVMR compares with an empty, invalid "previous step", so a first-step
  reflection is paid (`reflection_at_first_step`, default True, as RLVMR);
- <monitor>: 0;
- a step without a valid tag is invalid (RLVMR's format check); an invalid step gets tag "none", MR reward
  0, and the invalid penalty on its episode score (as in RLVMR's trainer; the MR reward is not penalised).
The MR reward is normalised within (episode group, tag) with the configured norm; like RLVMR's
`step_norm_reward_by_tag`, a (group, tag) holding a single step keeps its raw reward (mean 0, std 1).
Total = episode advantage (grpo.py, RLVMR computes it over step samples) + omega * MR advantage.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from gcd_trl.advantages.common import (
    NO_TAG,
    TAGS,
    AdvantageConfig,
    Advantages,
    StepBatch,
    dense_keys,
    normalize_in_groups,
)
from gcd_trl.advantages.grpo import episode_advantage

PLANNING, EXPLORE, REFLECTION, MONITOR = (
    TAGS.index(t) for t in ("planning", "explore", "reflection", "monitor")
)


def effective_tags(batch: StepBatch) -> tuple[np.ndarray, np.ndarray]:
    """(tag codes with invalid steps set to "none", invalid flags including steps without a valid tag)."""
    if batch.tag is None:
        raise ValueError("rlvmr needs a meta-reasoning tag per step (records lack 'tag')")
    invalid = batch.invalid | (batch.tag == NO_TAG)
    return np.where(invalid, NO_TAG, batch.tag).astype(np.int8), invalid


def mr_rewards(
    batch: StepBatch,
    *,
    planning_reward: float = 1.0,
    explore_reward: float = 1.0,
    reflection_reward: float = 1.0,
    reflection_at_first_step: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: (MR reward, effective tag code, effective invalid flag)."""
    tag, invalid = effective_tags(batch)
    if batch.action is None:
        raise ValueError("rlvmr needs the parsed action per step (records lack 'action')")
    o = batch.order
    t, a, bad, tg = batch.traj[o], batch.action[o], invalid[o], tag[o]
    n = len(o)
    reward = np.zeros(n)

    success = batch.episode_reward[o] > 0
    reward[(tg == PLANNING) & success] = planning_reward

    # explore: first valid occurrence of (trajectory, action); rows are in step order within a trajectory.
    valid_rows = np.flatnonzero(~bad)
    first_valid = np.zeros(n, dtype=bool)
    if len(valid_rows):
        keys, n_keys = dense_keys(t[valid_rows], a[valid_rows])
        first = np.full(n_keys, len(keys), dtype=np.int64)
        np.minimum.at(first, keys, np.arange(len(keys)))
        first_valid[valid_rows[first]] = True
    reward[(tg == EXPLORE) & first_valid] = explore_reward

    # reflection: previous step of the same trajectory failed (invalid or inadmissible), and a different
    # action now; or the first step of a trajectory (RLVMR's empty, invalid "previous step").
    failed = bad if batch.inadmissible is None else bad | batch.inadmissible[o]
    has_prev = np.r_[False, t[1:] == t[:-1]]
    prev_failed = np.r_[False, failed[:-1]]
    prev_differs = np.r_[False, a[1:] != a[:-1]]
    paid = has_prev & prev_failed & prev_differs
    if reflection_at_first_step:
        paid |= ~has_prev
    reward[(tg == REFLECTION) & paid] = reflection_reward

    out = np.empty(n)
    out[o] = reward
    return out, tag, invalid


def compute(batch: StepBatch, config: AdvantageConfig) -> Advantages:
    reward, tag, invalid = mr_rewards(
        batch,
        planning_reward=config.planning_reward,
        explore_reward=config.explore_reward,
        reflection_reward=config.reflection_reward,
        reflection_at_first_step=config.reflection_at_first_step,
    )
    # A step without a valid tag counts as invalid for the episode score's penalty too.
    scored = batch if np.array_equal(invalid, batch.invalid) else replace(batch, invalid=invalid)
    ep = episode_advantage(
        scored,
        norm=config.norm,
        invalid_penalty=config.invalid_penalty,
        level=config.grpo_level,
        epsilon=config.epsilon,
    )
    keys, n_keys = dense_keys(batch.group, tag.astype(np.int64))
    step = normalize_in_groups(
        reward, keys, n_keys, norm=config.norm, epsilon=config.epsilon, singleton="raw"
    )
    return Advantages(total=ep + config.omega * step, episode=ep, step=step, step_signal=reward)
