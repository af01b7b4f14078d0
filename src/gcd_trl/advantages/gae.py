"""PPO's token-level GAE as verl-agent runs it (`algorithm.adv_estimator=gae`), as pure numpy functions.

verl-agent's PPO recipe (examples/ppo_trainer/run_alfworld.sh) treats every env step as its own response:
- token rewards: the step's score, `episode_reward - invalid_penalty * invalid` (the GRPO estimators'
  convention, `grpo.episode_scores`: `success_reward * won` unless the record carries `episode_reward`),
  sits on the last token of the step's completion (verl-agent's `EpisodeRewardManager` writes the episode
  reward at `valid_response_length - 1`; `apply_invalid_action_penalty` subtracts the penalty there); every
  other token's reward is 0;
- `compute_gae_advantage_return` (verl's core_algos, the version verl-agent ships), inside each step sample,
  with a critic value V_t per completion token (the value of the state the token is chosen in):

      delta_t = r_t + gamma * V_{t+1} - V_t        (V_{T} = 0 past the last column)
      A_t     = delta_t + gamma * lam * A_{t+1}    (A_{T} = 0)
      R_t     = A_t + V_t                          (the critic's targets: returns, before whitening)

  the recurrence runs over every column, masked or not (verl zeroes the critic's values outside the
  response mask first, so right-padding adds nothing); then the advantages are whitened over the masked
  tokens of the whole batch: (A - mean) / sqrt(var + 1e-8) with the Bessel-corrected variance
  (`verl_F.masked_whiten`). With the defaults gamma = lam = 1, A_t = score - V_t and R_t = score.

`compute(batch, config)` is this estimator without a critic (V = 0, one token per step), for
`gcd-trl advantages`: each step's score, whitened over the steps. The trainer (`gcd_trl.trainers.ppo`) uses the
critic's values and the real completion tokens instead.
"""

from __future__ import annotations

import numpy as np

from gcd_trl.advantages.common import AdvantageConfig, Advantages, StepBatch
from gcd_trl.advantages.grpo import episode_scores

WHITEN_EPS = 1e-8  # verl_F.masked_whiten


def token_rewards(scores: np.ndarray, lengths: np.ndarray, width: int | None = None) -> np.ndarray:
    """(N, width) rewards: score i on the last token (lengths[i] - 1) of row i, 0 elsewhere.

    A row of length 0 gets no reward (it has no token to carry it)."""
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.zeros((len(scores), width))
    rows = np.flatnonzero(lengths > 0)
    out[rows, lengths[rows] - 1] = scores[rows]
    return out


def gae_advantages(
    rewards: np.ndarray, values: np.ndarray, gamma: float = 1.0, lam: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (unwhitened) advantages and returns of verl's `compute_gae_advantage_return`, row by row.

    `values` must already be zero outside the response mask (as verl's critic returns them)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if rewards.shape != values.shape or rewards.ndim != 2:
        raise ValueError(f"rewards {rewards.shape} and values {values.shape} must be equal (N, T) arrays")
    n, width = rewards.shape
    adv = np.zeros((n, width))
    last = np.zeros(n)
    next_values = np.zeros(n)
    for t in range(width - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
        next_values = values[:, t]
    return adv, adv + values


def masked_moments(x: np.ndarray, mask: np.ndarray, mean: float | None = None) -> tuple[float, float]:
    """(count, sum) of the masked entries, or with `mean` given (count, sum of squared deviations)."""
    m = np.asarray(mask, dtype=bool)
    v = np.asarray(x, dtype=np.float64)[m]
    return float(v.size), float(v.sum() if mean is None else ((v - mean) ** 2).sum())


def whiten(x: np.ndarray, mean: float, sq_dev: float, count: float) -> np.ndarray:
    """verl's masked_whiten from (global) statistics: (x - mean) / sqrt(unbiased var + 1e-8)."""
    if count < 2:
        raise ValueError(f"whitening needs at least 2 masked tokens, got {count:g}")
    var = sq_dev / count * (count / (count - 1))
    return (np.asarray(x, dtype=np.float64) - mean) / np.sqrt(var + WHITEN_EPS)


def masked_whiten(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """verl_F.masked_whiten on one process: statistics over the masked entries, applied to all."""
    count, total = masked_moments(x, mask)
    mean = total / max(count, 1.0)
    _, sq = masked_moments(x, mask, mean)
    return whiten(x, mean, sq, count)


def compute_gae_advantage_return(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float = 1.0, lam: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """verl's `compute_gae_advantage_return`: (whitened advantages, returns), both (N, T)."""
    adv, returns = gae_advantages(rewards, values, gamma, lam)
    return masked_whiten(adv, mask), returns


def compute(batch: StepBatch, config: AdvantageConfig) -> Advantages:
    """The critic-free view (V = 0, one token per step sample): each step's score, whitened over steps."""
    scores = episode_scores(batch, config.invalid_penalty)
    if len(scores) < 2 or np.all(scores == scores[0]):
        total = scores - scores.mean() if len(scores) else scores
    else:
        total = masked_whiten(scores[:, None], np.ones((len(scores), 1), dtype=bool))[:, 0]
    zeros = np.zeros_like(total)
    return Advantages(total=total, episode=total, step=zeros, step_signal=scores)
