"""GRPO for multi-turn agents: every step of an episode gets the episode's outcome, normalised in its group.

Conventions (verl-agent's `compute_grpo_outcome_advantage` / GiGPO's `episode_norm_reward`, matched):
- a step sample's score is `episode_reward - invalid_penalty * invalid` (verl-agent subtracts the penalty
  from the step's token-level score before the advantage, so invalid steps score lower than their
  siblings);
- level "steps" (verl-agent's default, `compute_mean_std_cross_steps=True`): the group mean/std are taken
  over all step samples of the group, so long trajectories weigh more in the baseline;
  level "trajectories": one value per trajectory; like verl-agent this is the score of the trajectory's
  first step sample (its penalty included), and every step is then normalised with those statistics;
- norm "mean_std": (x - mean) / (std + 1e-6) with the unbiased (Bessel) std, as torch.std; "mean": x - mean;
- a group holding a single sample (one step sample, or one trajectory at level "trajectories") keeps its
  raw score (verl-agent: mean 0, std 1). A group whose scores are all equal gets 0.
"""

from __future__ import annotations

import numpy as np

from gcd_trl.advantages.common import AdvantageConfig, Advantages, StepBatch, group_stats, normalize


def episode_scores(batch: StepBatch, invalid_penalty: float) -> np.ndarray:
    """The outcome each step sample is credited with: the episode reward less its own invalid penalty."""
    return batch.episode_reward - invalid_penalty * batch.invalid


def episode_advantage(
    batch: StepBatch,
    *,
    norm: str = "mean_std",
    invalid_penalty: float = 0.1,
    level: str = "steps",
    epsilon: float = 1e-6,
) -> np.ndarray:
    """The episode (outcome) advantage of every step sample, normalised within its group."""
    x = episode_scores(batch, invalid_penalty)
    if level == "steps":
        _, mean, std = group_stats(batch.group, x, batch.n_groups, singleton="raw")
    elif level == "trajectories":
        first = batch.first_in_traj
        _, mean, std = group_stats(batch.group[first], x[first], batch.n_groups, singleton="raw")
    else:
        raise ValueError(f"level={level!r} must be 'steps' or 'trajectories'")
    return normalize(x, batch.group, mean, std, norm, epsilon)


def compute(batch: StepBatch, config: AdvantageConfig) -> Advantages:
    ep = episode_advantage(
        batch,
        norm=config.norm,
        invalid_penalty=config.invalid_penalty,
        level=config.grpo_level,
        epsilon=config.epsilon,
    )
    zeros = np.zeros_like(ep)
    return Advantages(total=ep, episode=ep, step=zeros, step_signal=zeros)
