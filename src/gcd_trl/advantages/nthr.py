"""NTHR: selective token penalization of negative samples (Deng et al. 2025a, arXiv 2505.18830, §5).

GRPO pushes every token of a negative-advantage sample down with the same strength. Under the paper's
unconstrained-features view (logits = W h), pushing token k' of negative response j down also lowers the
likelihood of the positive responses i of the group in proportion to

    s-_{j,<k'} = sum_{i in [N+]} sum_{k=1}^{|y+_i|} alpha-_{k,k'} <h_{x,y+_{i,<k}}, h_{x,y-_{j,<k'}}>      (Eq. 7)

the negative token hidden reward (NTHR), where h is the final hidden state before the token (the LM head's
input) and alpha_{k,k'} = <e_{y_k} - pi(.|x,y_{<k}), e_{y_k'} - pi(.|x,y_{<k'})> is the similarity of the two
tokens' prediction errors (Theorem 4.4 / Corollary 4.5). Tokens with s- above a threshold are selected

    V-_j = { y-_{j,k'} : s-_{j,<k'} > tau },   tau = beta * min_{i' in [N+]} s-bar+_{i'}                 (Eq. 8)

where s-bar+_{i'} is the mean, over the tokens k'' of positive response i', of the same score against the
positive responses (Eq. 9: sum_i sum_k alpha+_{k,k''} <h+_{i,<k}, h+_{i',<k''}>, every positive response
included), and the advantage of a selected token becomes eta * A-_{j,k'} (Algorithm 1, lines 10-12). The
paper uses beta = 1 and eta = 2|0.5 - p| with p the group's success rate (appendix 7.3; `nthr_eta`).

Computed as in the paper's appendix 7.4: the sums over positive tokens first, M+ = sum_t g+_t (h+_t)^T
(|V*| x d), then s_t = g_t^T M+ h_t for every token; prediction errors restricted to V*, the tokens that
occur in the group's completions (not renormalised).

In the multi-turn agent setting (gcd_trl.trainers.token) a "response" is one env step's completion and its
group is the G episodes of one task: positive samples are the group's step samples with advantage > 0,
negative ones those with advantage < 0. The step samples of a group pool different prompts (each step of
each episode has its own state), as GiGPO-free GRPO pools them for its advantages; the hidden-state
products of Eq. 7 and 9 are taken across them as if they shared one prompt. p is the group's success
rate as Deng et al. define it, over episodes: the share of the G episodes that were won (not the share of
positive step samples, which long failed episodes would skew: 4 wins of 8 gives eta 0, not 0.58). Groups
without both kinds of samples are left alone (the paper's extreme groups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ETA_RULES = ("2|0.5-p|", "1-p", "p")  # appendix 7.6, Table 5; the first is the paper's choice


def parse_eta(spec: str | float) -> str | float:
    """`nthr_eta` as one of ETA_RULES or a constant in [0, 1]; ValueError naming the problem otherwise."""
    if isinstance(spec, str) and spec.replace(" ", "") in ETA_RULES:
        return spec.replace(" ", "")
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"{spec!r} is not one of {', '.join(ETA_RULES)} or a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{spec!r}: a constant eta must lie in [0, 1]")
    return value


def eta_value(spec: str | float, p: float) -> float:
    """The advantage scale of selected tokens for a group whose positive share is p."""
    rule = parse_eta(spec)
    if rule == "2|0.5-p|":
        return 2.0 * abs(0.5 - p)
    if rule == "1-p":
        return 1.0 - p
    if rule == "p":
        return p
    return float(rule)


def group_success_rate(episodes_won: dict[Any, bool] | None) -> float:
    """p of Eq. 8's eta rule: the share of the group's episodes that were won (0 for no episode)."""
    if not episodes_won:
        return 0.0
    return sum(bool(w) for w in episodes_won.values()) / len(episodes_won)


def prediction_errors(probs: Any, targets: Any) -> Any:
    """e_y - pi(.|context) restricted to a vocabulary subset: `probs` (T, V*) are pi's entries on V*,
    `targets` (T,) the column of each token's own id in V*."""
    import torch

    err = -probs.clone()
    err[torch.arange(len(targets), device=probs.device), targets] += 1.0
    return err


def token_scores(errors: Any, hidden: Any, m_pos: Any) -> Any:
    """s_t = g_t^T M+ h_t for every row t: (T,)."""
    return ((errors @ m_pos) * hidden).sum(-1)


def _wide(x: Any) -> Any:
    """float32 at least: the sums over many tokens are accumulated in full precision (bf16 models)."""
    import torch

    return x if x.dtype == torch.float64 else x.float()


@dataclass
class NTHRResult:
    """Per negative sample: token weights (1, or eta where selected) and scores; the group's statistics."""

    weights: list[Any]  # per negative sample, (T_j,) float tensors
    scores: list[Any]  # per negative sample, (T_j,) s- (Eq. 7)
    positive_means: list[float]  # s-bar+ of each positive sample (Eq. 9)
    tau: float
    eta: float
    selected: int  # negative tokens selected
    tokens: int  # negative tokens in all


def nthr_weights(
    pos_hidden: Sequence[Any],
    pos_errors: Sequence[Any],
    neg_hidden: Sequence[Any],
    neg_errors: Sequence[Any],
    *,
    p: float,
    beta: float = 1.0,
    eta: str | float = "2|0.5-p|",
) -> NTHRResult:
    """Algorithm 1 for one group: hidden states (T_i, d) and prediction errors (T_i, V*) of the positive
    and the negative samples' completion tokens -> each negative token's advantage weight."""
    import torch

    if not pos_hidden or not neg_hidden:
        raise ValueError("NTHR needs at least one positive and one negative sample in the group")
    h_pos = torch.cat([_wide(h) for h in pos_hidden])
    g_pos = torch.cat([_wide(g) for g in pos_errors])
    m_pos = g_pos.T @ h_pos  # (V*, d): the sums over positive tokens, done once
    s_pos = token_scores(g_pos, h_pos, m_pos)
    means = [float(x.mean()) for x in torch.split(s_pos, [len(h) for h in pos_hidden]) if len(x)]
    tau = beta * min(means)
    scale = eta_value(eta, p)
    weights, scores, selected, tokens = [], [], 0, 0
    for h, g in zip(neg_hidden, neg_errors):
        s = token_scores(_wide(g), _wide(h), m_pos)
        chosen = s > tau
        weights.append(torch.where(chosen, torch.full_like(s, scale), torch.ones_like(s)))
        scores.append(s)
        selected += int(chosen.sum())
        tokens += len(s)
    return NTHRResult(weights, scores, means, float(tau), scale, selected, tokens)
