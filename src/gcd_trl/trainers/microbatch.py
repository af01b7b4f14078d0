"""Micro-batches, free of models: how a round's samples are cut into micro-batches under a token budget,
how every process gets the same number of micro-batches, and how each micro-batch's loss is scaled so the
round's gradient does not depend on the cut.

A round is one optimizer step. Its samples (one per env step, variable in number) are packed into
micro-batches whose padded size (rows x (longest prompt + longest completion)) stays within
`max_tokens_per_microbatch`. Processes must run the same number of forward/backward passes (DDP, ZeRO
and FSDP hang otherwise), so a process with fewer micro-batches splits its largest ones and, when it has
too few samples, adds padding micro-batches whose only row carries no loss (`completion_mask` all zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# TRL loss types, by how TRL normalises one micro-batch (trl/trainer/grpo_trainer.py `_compute_loss`):
# the sum of token losses divided by `num_items_in_batch` (a global token count) ...
TOKEN_SUM_LOSSES = ("dapo", "cispo", "vespo")
# ... a token mean over the local micro-batch ...
LOCAL_TOKEN_MEAN_LOSSES = ("bnpo",)
# ... or a mean over the micro-batch's rows (of a per-sequence mean, sum, or sum / max_completion_length).
ROW_MEAN_LOSSES = ("grpo", "sapo", "luspo", "dr_grpo")
LOSS_TYPES = TOKEN_SUM_LOSSES + LOCAL_TOKEN_MEAN_LOSSES + ROW_MEAN_LOSSES


# ------------------------------------------------------------------------------------------------------
# Micro-batches


def padded_tokens(indices: Sequence[int], prompt_lens: Sequence[int], completion_lens: Sequence[int]) -> int:
    """Tokens a micro-batch costs once padded: rows x (longest prompt + longest completion)."""
    if not indices:
        return 0
    return len(indices) * (max(prompt_lens[i] for i in indices) + max(completion_lens[i] for i in indices))


def pack_microbatches(
    prompt_lens: Sequence[int], completion_lens: Sequence[int], max_tokens: int
) -> list[list[int]]:
    """Cut samples into micro-batches of at most `max_tokens` padded tokens.

    Samples are sorted by length (longest first) so that rows of a micro-batch have similar lengths and
    little padding; a sample longer than the budget on its own gets a micro-batch to itself.
    """
    if len(prompt_lens) != len(completion_lens):
        raise ValueError("pack_microbatches: prompt_lens and completion_lens differ in length")
    order = sorted(range(len(prompt_lens)), key=lambda i: (-(prompt_lens[i] + completion_lens[i]), i))
    batches: list[list[int]] = []
    current: list[int] = []
    max_p = max_c = 0
    for i in order:
        p, c = max(max_p, prompt_lens[i]), max(max_c, completion_lens[i])
        if current and (len(current) + 1) * (p + c) > max_tokens:
            batches.append(current)
            current, p, c = [], prompt_lens[i], completion_lens[i]
        current.append(i)
        max_p, max_c = p, c
    if current:
        batches.append(current)
    return batches


def equalize_microbatches(batches: list[list[int]], target: int) -> list[list[int]]:
    """Bring a process's micro-batch count up to `target` (the maximum over processes).

    The micro-batch with the most rows is split in two until the count is reached; when every
    micro-batch is a single row, empty micro-batches (to be filled with one zero-weight padding row)
    are appended. Splitting keeps the padded size within the budget and wastes no compute.
    """
    if len(batches) > target:
        raise ValueError(f"equalize_microbatches: {len(batches)} micro-batches exceed the target {target}")
    out = [list(b) for b in batches]
    while len(out) < target:
        k = max(range(len(out)), key=lambda j: len(out[j]), default=None)
        if k is None or len(out[k]) < 2:
            out.extend([] for _ in range(target - len(out)))
            break
        b = out.pop(k)
        half = len(b) // 2
        out[k:k] = [b[:half], b[half:]]
    return out


@dataclass(frozen=True)
class RoundTotals:
    """Counts over the whole round on all processes, which fix the loss normalisation."""

    rows: int  # real samples (padding rows excluded)
    tokens: int  # completion tokens that carry loss
    num_processes: int
    num_microbatches: int  # per process (equal on every process)


def microbatch_loss_scale(
    loss_type: str, totals: RoundTotals, mb_rows: int, mb_tokens: int
) -> tuple[float, float]:
    """(num_items_in_batch, factor) that make TRL's micro-batch loss sum to the round's loss.

    TRL's `_compute_loss` is called with `current_gradient_accumulation_steps = M` (micro-batches per
    process) and `steps_per_generation = 1`; the returned loss is multiplied by `factor`. Gradients are
    then averaged over the P processes (DDP/ZeRO/FSDP), so each process's share must be P x its part of
    the round's loss. The round's loss is the loss type's own formula applied to the whole round:
    token-sum losses divide by the round's token count (DAPO / verl-agent token-mean), row losses
    average over the round's rows, bnpo is a token mean over the round.

    `mb_rows` counts every row of the micro-batch, padding rows included (TRL's row mean counts them);
    `mb_tokens` counts its loss-carrying completion tokens.
    """
    P, M = totals.num_processes, totals.num_microbatches
    rows, tokens = max(totals.rows, 1), max(totals.tokens, 1)
    if loss_type in TOKEN_SUM_LOSSES:
        # TRL: sum / (max(num_items, 1) / P * M / steps_per_generation)  -> pass num_items = tokens / M
        if tokens >= M:
            return tokens / M, 1.0
        return 1.0, M / tokens  # TRL clamps num_items at 1: correct the rare round with fewer tokens than M
    if loss_type in LOCAL_TOKEN_MEAN_LOSSES:
        # TRL: sum / mb_tokens / M
        return float(tokens), mb_tokens * M * P / tokens
    if loss_type in ROW_MEAN_LOSSES:
        # TRL: (1 / mb_rows) * sum_rows f / M
        return float(tokens), mb_rows * M * P / rows
    raise ValueError(f"unknown loss_type {loss_type!r}; one of {', '.join(LOSS_TYPES)}")


# ------------------------------------------------------------------------------------------------------
# An optimizer step's samples, as model inputs


def chunk(items: list, parts: int, k: int) -> list:
    """The k-th of `parts` contiguous, near-equal slices of `items` (sizes differ by at most one)."""
    n = len(items)
    return items[k * n // parts : (k + 1) * n // parts]


@dataclass
class Update:
    """One optimizer step's samples: micro-batches (model inputs), each one's loss scale and entropy scale."""

    microbatches: list[dict[str, Any]]
    factors: list[float]
    entropy_scales: list[float]  # multiplies a micro-batch's summed token entropy (0: padding)
    plan: list[list[int]]  # sample indices of each micro-batch
    totals: dict[str, RoundTotals]  # per sample kind ("agent", "judge")
    padded_tokens: int  # what the micro-batches cost once padded (this process)


@dataclass
class Round:
    """A built round: its optimizer steps (one without mini-batches) and bookkeeping."""

    updates: list[Update]
    index: int  # the round's number (task sampler cursor)
    time_logps: float = 0.0


def carries_loss(sample: Any, mask_truncated: bool) -> bool:
    """Whether a sample's completion tokens enter the loss (not empty, not dropped, not a masked truncation)."""
    return bool(sample.completion_ids) and sample.weight != 0 and not (sample.truncated and mask_truncated)


@dataclass
class Cut:
    """How an optimizer step's samples are cut: the micro-batches (sample indices, one kind each, the same
    count on every process) and the counts over all processes that fix each micro-batch's loss scale."""

    plan: list[list[int]]
    kinds: list[str]  # each micro-batch's sample kind ("agent" for padding)
    totals: dict[str, RoundTotals]
    loss_tokens: list[int]  # per sample: completion tokens that carry loss
    padded_tokens: int

    def scale(self, k: int, loss_type: str, coef: float) -> tuple[float, float, float]:
        """(num_items_in_batch, loss factor, entropy scale) of micro-batch k: the step's loss is
        sum over kinds of coef x (the loss type's formula over that kind's samples), and the entropy bonus a
        token mean over the kind's tokens of the step, on every process's share."""
        idx, totals = self.plan[k], self.totals[self.kinds[k]]
        mb_tokens = sum(self.loss_tokens[i] for i in idx)
        num_items, factor = microbatch_loss_scale(
            loss_type, totals, mb_rows=max(len(idx), 1), mb_tokens=mb_tokens
        )
        entropy = coef * totals.num_processes / totals.tokens if idx and totals.tokens else 0.0
        return num_items, factor * coef, entropy


def cut_update(
    samples: Sequence[Any],
    max_tokens: int,
    *,
    mask_truncated: bool,
    kinds: Sequence[str],
    num_processes: int = 1,
    max_over_processes: Any = max,
    sum_over_processes: Any = list,
) -> Cut:
    """Micro-batches under the token budget, one sample kind each (in `kinds` order), equalised to the
    busiest process's count. `max_over_processes(int) -> int` and `sum_over_processes(list) -> list` are
    the all-reduces (identity for one process)."""
    loss_tokens = [len(s.completion_ids) if carries_loss(s, mask_truncated) else 0 for s in samples]
    prompt_lens = [len(s.prompt_ids) for s in samples]
    completion_lens = [len(s.completion_ids) for s in samples]
    plan: list[list[int]] = []
    counts: list[int] = []
    for kind in kinds:
        idx = [i for i, s in enumerate(samples) if s.kind == kind]
        packed = pack_microbatches(
            [prompt_lens[i] for i in idx], [completion_lens[i] for i in idx], max_tokens
        )
        plan += [[idx[j] for j in mb] for mb in packed]
        counts += [len(idx), sum(loss_tokens[i] for i in idx)]
    num_mb = max(max_over_processes(len(plan)), 1)
    counts = sum_over_processes(counts)
    totals = {
        kind: RoundTotals(
            rows=counts[2 * k], tokens=counts[2 * k + 1], num_processes=num_processes, num_microbatches=num_mb
        )
        for k, kind in enumerate(kinds)
    }
    plan = equalize_microbatches(plan, num_mb)
    padded = sum(padded_tokens(idx, prompt_lens, completion_lens) for idx in plan)
    return Cut(plan, [samples[idx[0]].kind if idx else "agent" for idx in plan], totals, loss_tokens, padded)


def collate(
    samples: Sequence[Any],
    pad_id: int,
    device: Any,
    *,
    mask_truncated: bool,
    sampling_logps: bool = False,
    critic_targets: bool = False,
) -> dict[str, Any]:
    """Model inputs of a micro-batch: prompts left-padded, completions right-padded, `completion_mask` on the
    loss-carrying tokens, `advantages` (B,), or (B, C) when a sample has per-token advantages (PPO) or NTHR
    token weights. No samples: one zero-weight padding row. `sampling_logps`: the behaviour log-probs
    (vLLM, NaN where unknown); `critic_targets`: PPO's returns, old values and value mask."""
    import math

    import torch
    from trl.trainer.utils import pad

    if not samples:
        one = torch.tensor([[pad_id]], device=device)
        mb = {
            "prompt_ids": one,
            "prompt_mask": torch.ones_like(one),
            "completion_ids": one.clone(),
            "completion_mask": torch.zeros_like(one),
            "advantages": torch.zeros(1, device=device),
            **({"sampling_per_token_logps": torch.zeros(1, 1, device=device)} if sampling_logps else {}),
        }
    else:
        prompts = [torch.tensor(s.prompt_ids) for s in samples]
        completions = [torch.tensor(s.completion_ids if s.completion_ids else [pad_id]) for s in samples]
        mask_rows = [
            torch.full_like(c, int(carries_loss(s, mask_truncated))) for s, c in zip(samples, completions)
        ]
        mb = {
            "prompt_ids": pad(prompts, padding_value=pad_id, padding_side="left").to(device),
            "prompt_mask": pad(
                [torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left"
            ).to(device),
            "completion_ids": pad(completions, padding_value=pad_id, padding_side="right").to(device),
            "completion_mask": pad(mask_rows, padding_value=0, padding_side="right").to(device),
            "advantages": torch.tensor(
                [s.advantage * s.weight for s in samples], dtype=torch.float32, device=device
            ),
        }
        if sampling_logps:
            logps = [
                torch.tensor([math.nan if x is None else x for x in (s.logprobs or [math.nan] * len(c))])
                for s, c in zip(samples, completions)
            ]
            mb["sampling_per_token_logps"] = pad(logps, padding_value=0.0, padding_side="right").to(device)
        _token_advantages(mb, samples, device)
    if critic_targets:
        _critic_targets(mb, samples, device)
    return mb


def _token_advantages(mb: dict[str, Any], samples: Sequence[Any], device: Any) -> None:
    """(B, C) advantages when a sample has token-level data: PPO's per-token advantages, or NTHR's token
    weights times the sample's advantage; the other rows repeat their advantage on every token."""
    import torch

    rows = []
    for s in samples:
        if s.token_advantages is not None:
            rows.append(torch.as_tensor(s.token_advantages, dtype=torch.float32) * s.weight)
        elif getattr(s, "token_weights", None) is not None:
            rows.append(s.token_weights.float() * (s.advantage * s.weight))
        else:
            rows.append(None)
    if all(r is None for r in rows):
        return
    width = mb["completion_ids"].size(1)
    adv = torch.zeros(len(samples), width)
    for r, (s, vec) in enumerate(zip(samples, rows)):
        if vec is None:
            adv[r] = s.advantage * s.weight
        else:
            adv[r, : len(vec)] = vec[:width]
    mb["advantages"] = adv.to(device)


def _critic_targets(mb: dict[str, Any], samples: Sequence[Any], device: Any) -> None:
    """The critic's targets: returns, old values and the mask of tokens that train it (agent samples with
    GAE data; zeros for judge and padding rows, which still run the critic under DDP)."""
    import torch

    width = mb["completion_ids"].size(1)
    rows = max(len(samples), 1)
    returns, old, value_mask = torch.zeros(rows, width), torch.zeros(rows, width), torch.zeros(rows, width)
    for r, s in enumerate(samples):
        if getattr(s, "returns", None) is None:
            continue
        n = min(len(s.returns), width)
        returns[r, :n] = torch.as_tensor(s.returns[:n])
        old[r, :n] = torch.as_tensor(s.values[:n])
        value_mask[r] = mb["completion_mask"][r].float().cpu()
    mb["returns"], mb["old_values"], mb["value_mask"] = (
        returns.to(device),
        old.to(device),
        value_mask.to(device),
    )
