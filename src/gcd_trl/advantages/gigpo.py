"""GiGPO (Feng et al. 2025): GRPO's episode advantage plus a step advantage from anchor-state groups.

Numerically matches verl-agent's `compute_gigpo_outcome_advantage` (gigpo/core_gigpo.py) with the inputs
its trainer feeds it; the conventions, all taken from there:
- step return: R_t = r_t + gamma * R_{t+1} over each trajectory's env step rewards (`step_reward`), in step
  order (verl-agent's `compute_step_discounted_returns`). The references' env reward is `10 * won`, paid
  on the step that ends the episode, on ALFWorld and ScienceWorld alike; records without `step_reward` get
  exactly that (`step_reward="success"`: the episode reward on the trajectory's last step); the option
  `step_reward="dense"` feeds `success_reward * env_reward` instead (ScienceWorld: score delta / 100);
- the invalid penalty enters *after* discounting: only the invalid step's own return drops by
  `invalid_penalty` (verl-agent's `apply_invalid_action_penalty` edits `step_rewards`, which by then hold
  the returns); the episode score drops the same way (see grpo.py);
- step groups: within one episode group, the steps whose anchor (the raw env observation, no history) is
  identical; all time steps and trajectories of the group pool together;
- with `similarity_threshold` t in (0, 1): greedy clustering as verl-agent's `build_step_group` does it:
  walking the group's steps in (trajectory, step) order, a step joins the first cluster whose
  representative (its first member) has `difflib.SequenceMatcher(None, anchor, rep).ratio() >= t`, else
  founds a new cluster. Identical anchors always share a cluster, so clustering runs over the distinct
  anchors of a group only, with difflib's cheap upper bounds (real_quick_ratio, quick_ratio) checked first.
  This is O(distinct anchors x clusters) per group and not vectorised: fine for rollouts, slow for 1M steps;
- the step return is normalised in its step group with the same `norm` as the episode level
  (verl-agent's `mode`: mean_std_norm / mean_norm), unbiased std, eps 1e-6; a step group of one gets 0;
- total = episode advantage + omega * step advantage (omega is verl-agent's step_advantage_w).
"""

from __future__ import annotations

from difflib import SequenceMatcher

import numpy as np

from gcd_trl.advantages.common import AdvantageConfig, Advantages, StepBatch, dense_keys, normalize_in_groups
from gcd_trl.advantages.grpo import episode_advantage


def discounted_returns(batch: StepBatch, gamma: float) -> np.ndarray:
    """R_t = r_t + gamma * R_{t+1} within each trajectory (by step), aligned with the batch rows.

    Vectorised over trajectories: rows are processed by their distance from their trajectory's end, one
    numpy operation per distance, so the loop runs max-trajectory-length times, not once per step.
    """
    n = len(batch)
    o = batch.order
    t = batch.traj[o]
    r = batch.step_reward[o]
    if n == 0:
        return np.zeros(0)
    ends = np.flatnonzero(np.r_[t[1:] != t[:-1], True])  # each trajectory's last row, in sorted order
    lengths = np.diff(np.r_[-1, ends])
    by_length = np.argsort(-lengths, kind="stable")
    ends, neg_lengths = ends[by_length], -lengths[by_length]
    returns = r.copy()  # distance 0 from the end: R = r
    for d in range(1, int(lengths.max())):
        rows = (
            ends[: np.searchsorted(neg_lengths, -d)] - d
        )  # rows d steps before the end of a long-enough traj
        returns[rows] = r[rows] + gamma * returns[rows + 1]
    out = np.empty(n)
    out[o] = returns
    return out


def step_group_keys(batch: StepBatch, similarity_threshold: float | None = None) -> tuple[np.ndarray, int]:
    """Dense step-group id per row: (episode group, anchor), or similarity clusters of anchors."""
    if batch.anchor is None:
        raise ValueError("gigpo needs an anchor observation per step (records lack 'anchor')")
    keys, n_keys = dense_keys(batch.group, batch.anchor)
    if similarity_threshold is None or similarity_threshold >= 1.0:
        return keys, n_keys
    return _cluster_similar(batch, keys, n_keys, similarity_threshold)


def _cluster_similar(
    batch: StepBatch, keys: np.ndarray, n_keys: int, threshold: float
) -> tuple[np.ndarray, int]:
    o = batch.order
    first_row = np.full(n_keys, len(o), dtype=np.int64)
    np.minimum.at(first_row, keys[o], np.arange(len(o)))  # position of each key's first step, in order
    key_group = np.empty(n_keys, dtype=np.int64)
    key_group[keys] = batch.group
    key_anchor = np.empty(n_keys, dtype=np.int64)
    key_anchor[keys] = batch.anchor
    cluster_of_key = np.empty(n_keys, dtype=np.int64)
    clusters: dict[int, list[tuple[SequenceMatcher, int]]] = {}
    n_clusters = 0
    for k in np.argsort(first_row, kind="stable").tolist():
        text = batch.anchor_values[key_anchor[k]]
        if not isinstance(text, str):
            raise ValueError(f"similarity grouping needs text anchors, got {type(text).__name__}")
        reps = clusters.setdefault(int(key_group[k]), [])
        for matcher, cluster in reps:
            matcher.set_seq1(text)
            if (
                matcher.real_quick_ratio() >= threshold
                and matcher.quick_ratio() >= threshold
                and matcher.ratio() >= threshold
            ):
                cluster_of_key[k] = cluster
                break
        else:
            matcher = SequenceMatcher(None)
            matcher.set_seq2(text)  # verl-agent compares SequenceMatcher(None, new, representative)
            reps.append((matcher, n_clusters))
            cluster_of_key[k] = n_clusters
            n_clusters += 1
    return cluster_of_key[keys], n_clusters


def compute(batch: StepBatch, config: AdvantageConfig) -> Advantages:
    ep = episode_advantage(
        batch,
        norm=config.norm,
        invalid_penalty=config.invalid_penalty,
        level=config.grpo_level,
        epsilon=config.epsilon,
    )
    returns = discounted_returns(batch, config.gamma) - config.invalid_penalty * batch.invalid
    keys, n_keys = step_group_keys(batch, config.similarity_threshold)
    step = normalize_in_groups(
        returns, keys, n_keys, norm=config.norm, epsilon=config.epsilon, singleton="zero"
    )
    return Advantages(total=ep + config.omega * step, episode=ep, step=step, step_signal=returns)
