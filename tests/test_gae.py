"""Token-level GAE (`gcd_trl.advantages.gae`): hand-computed examples, verl-agent's
`compute_gae_advantage_return` semantics on random inputs, whitening, and the critic-free records view."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gcd_trl.advantages import compute_advantage_terms
from gcd_trl.advantages.common import AdvantageConfig
from gcd_trl.advantages.gae import (
    compute_gae_advantage_return,
    gae_advantages,
    masked_whiten,
    token_rewards,
    whiten,
)


def test_gamma_lambda_one_gives_score_minus_value():
    rewards = np.array([[0.0, 0.0, 1.0]])
    values = np.array([[0.5, 0.2, 0.1]])
    adv, ret = gae_advantages(rewards, values, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[0.5, 0.8, 0.9]])
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0]])


def test_discounted_example_by_hand():
    # t=2: delta = 1 - 0.1 = 0.9, A = 0.9
    # t=1: delta = 0.9*0.1 - 0.2 = -0.11, A = -0.11 + 0.9*0.5*0.9 = 0.295
    # t=0: delta = 0.9*0.2 - 0.5 = -0.32, A = -0.32 + 0.45*0.295 = -0.18725
    adv, ret = gae_advantages(np.array([[0.0, 0.0, 1.0]]), np.array([[0.5, 0.2, 0.1]]), 0.9, 0.5)
    np.testing.assert_allclose(adv, [[-0.18725, 0.295, 0.9]])
    np.testing.assert_allclose(ret, [[0.31275, 0.495, 1.0]])


def test_rewards_sit_on_each_rows_last_token():
    r = token_rewards(np.array([10.0, -0.1, 3.0]), np.array([3, 1, 0]), width=4)
    np.testing.assert_allclose(r, [[0, 0, 10.0, 0], [-0.1, 0, 0, 0], [0, 0, 0, 0]])
    # right padding with zero values adds nothing: the real tokens' advantages match the unpadded row
    values = np.array([[0.3, 0.1, 0.2, 0.0]])
    padded, _ = gae_advantages(token_rewards(np.array([1.0]), np.array([3]), 4), values, 0.95, 0.9)
    alone, _ = gae_advantages(token_rewards(np.array([1.0]), np.array([3]), 3), values[:, :3], 0.95, 0.9)
    np.testing.assert_allclose(padded[:, :3], alone)


def test_whitening_by_hand():
    x = np.array([[1.0, 2.0, 3.0, 100.0]])
    mask = np.array([[True, True, True, False]])
    w = masked_whiten(x, mask)
    # mean 2, unbiased variance 1 over the three masked entries; the masked-out entry does not count
    np.testing.assert_allclose(w[0, :3], np.array([-1.0, 0.0, 1.0]) / math.sqrt(1 + 1e-8))
    assert w[0, 3] == pytest.approx(98.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        whiten(x, 0.0, 0.0, 1.0)


def _verl_reference(rewards, values, mask, gamma, lam):
    """verl-agent's compute_gae_advantage_return, written from its documented recurrence: next value
    V[t+1] (0 past the end), delta = r + gamma*V[t+1] - V[t], A = delta + gamma*lam*A[t+1] over every
    column; returns = A + V; then masked whitening with the Bessel-corrected variance and eps 1e-8."""
    import torch

    r, v, m = (torch.as_tensor(a, dtype=torch.float64) for a in (rewards, values, mask))
    width = r.shape[1]
    running = torch.zeros(r.shape[0], dtype=torch.float64)
    cols = []
    for t in range(width - 1, -1, -1):
        nxt = v[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        running = r[:, t] + gamma * nxt - v[:, t] + gamma * lam * running
        cols.append(running)
    adv = torch.stack(cols[::-1], dim=1)
    ret = adv + v
    n = m.sum()
    mean = (adv * m).sum() / n
    var = ((adv - mean) ** 2 * m).sum() / n * n / (n - 1)
    return ((adv - mean) / torch.sqrt(var + 1e-8)).numpy(), ret.numpy()


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0), (0.0, 0.7)])
def test_matches_verl_semantics_on_random_inputs(gamma, lam):
    rng = np.random.default_rng(int(gamma * 100 + lam * 10))
    for _ in range(5):
        n, width = rng.integers(1, 7), rng.integers(2, 40)
        rewards = rng.normal(size=(n, width)) * (rng.random((n, width)) < 0.3)
        values = rng.normal(size=(n, width))
        mask = rng.random((n, width)) < 0.7  # arbitrary masks, not only right padding
        mask[0, :2] = True
        adv, ret = compute_gae_advantage_return(rewards, values, mask, gamma, lam)
        ref_adv, ref_ret = _verl_reference(rewards, values, mask, gamma, lam)
        np.testing.assert_allclose(ret, ref_ret, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-9, atol=1e-9)


def test_critic_free_records_view_whitens_step_scores():
    records = [
        {"group": 0, "traj": 0, "step": 0, "won": True, "valid": True},
        {"group": 0, "traj": 0, "step": 1, "won": True, "valid": False},
        {"group": 0, "traj": 1, "step": 0, "won": False, "valid": True},
    ]
    out = compute_advantage_terms(records, AdvantageConfig(estimator="gae", invalid_penalty=0.1))
    scores = np.array([10.0, 9.9, 0.0])
    np.testing.assert_allclose(out.step_signal, scores)
    expected = (scores - scores.mean()) / np.sqrt(scores.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(out.total, expected)


def test_gae_config_fields_are_checked():
    from gcd_trl.config import ConfigError
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    base = dict(output_dir="/tmp/x", use_cpu=True, bf16=False, num_generations=2, tasks_per_round=1)
    assert AgentGRPOConfig(**base, advantage_estimator="gae").gae_gamma == 1.0
    for bad, key in [
        ({"gae_lambda": 1.5}, "gae_lambda"),
        ({"cliprange_value": 0.0}, "cliprange_value"),
        ({"critic_warmup_rounds": -1}, "critic_warmup_rounds"),
        ({"nthr": True}, "nthr"),  # gae is not a group-relative estimator
    ]:
        with pytest.raises(ConfigError, match=key):
            AgentGRPOConfig(**base, advantage_estimator="gae", **bad)
    with pytest.raises(ConfigError, match="critic_warmup_rounds"):
        AgentGRPOConfig(**base, critic_warmup_rounds=2)
    with pytest.raises(ConfigError, match="nthr_eta"):
        AgentGRPOConfig(**base, nthr=True, nthr_eta="half")


def test_verls_extra_critic_column_changes_nothing_at_the_recipes_gamma_and_lambda():
    """verl's dp_critic masks values with attention_mask[:, -L-1:-1]: one more column than the response,
    the value at the last response token, enters GAE. gcd-trl keeps values on the response tokens only
    (the value past the last token is 0). At gamma = lam = 1 (every PPO recipe) the actor's advantages are
    the same; below 1 they differ (docs/fidelity.md)."""
    import numpy as np

    from gcd_trl.advantages.gae import gae_advantages

    rng = np.random.default_rng(0)
    n = 5
    rewards = np.zeros((1, n + 1))
    rewards[0, n - 1] = 10.0
    values = rng.normal(size=(1, n + 1))  # verl: n response columns + the extra one
    ours = values.copy()
    ours[0, n] = 0.0  # gcd-trl: no value past the response
    for gamma, lam, same in ((1.0, 1.0, True), (0.99, 0.95, False)):
        a_verl, _ = gae_advantages(rewards, values, gamma, lam)
        a_ours, _ = gae_advantages(rewards[:, :n], ours[:, :n], gamma, lam)
        assert np.allclose(a_verl[0, :n], a_ours[0]) == same, (gamma, lam)
