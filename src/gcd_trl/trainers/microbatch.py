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
