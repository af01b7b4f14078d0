"""Log-probs of a micro-batch besides the loss pass, computed once per round before any update: the
behaviour (old) policy's, when a round's samples are reused (num_iterations > 1, several mini-batches) or
vLLM sampled them; the reference model's, when beta > 0; and TRL's vLLM importance-sampling ratio."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import trl.trainer.utils as trl_utils
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter


@torch.no_grad()
def add_old_and_ref_logps(trainer: Any, mb: dict[str, Any], reused: bool) -> None:
    """Add `old_per_token_logps` (when the round is `reused` or vLLM sampled it, with TRL's IS ratio) and
    `ref_per_token_logps` (beta > 0) to a micro-batch, through the trainer's own log-prob pass."""
    t = trainer
    need_old = reused or (t.use_vllm and t.vllm_importance_sampling_correction)
    if not need_old and t.beta == 0.0:
        return
    input_ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
    attention_mask = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
    keep = mb["completion_ids"].size(1)  # padding rows: attend to their one prompt token only
    with disable_gradient_checkpointing(t.model, t.args.activation_checkpointing_kwargs):
        if need_old:
            mb["old_per_token_logps"] = t._get_per_token_logps_and_entropies(
                t.model, input_ids, attention_mask, keep
            )[0]
        if t.use_vllm and t.vllm_importance_sampling_correction:
            mb["importance_sampling_ratio"] = vllm_is_ratio(
                mb,
                t.vllm_importance_sampling_mode,
                t.vllm_importance_sampling_clip_min,
                t.vllm_importance_sampling_clip_max,
            )
        if t.beta != 0.0:
            if t.ref_model is not None:
                ref = t._get_per_token_logps_and_entropies(t.ref_model, input_ids, attention_mask, keep)
            else:
                unwrapped = t.accelerator.unwrap_model(t.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    ref = t._get_per_token_logps_and_entropies(t.model, input_ids, attention_mask, keep)
            mb["ref_per_token_logps"] = ref[0]


def vllm_is_ratio(mb: dict[str, Any], mode: str, lo: float | None, hi: float | None) -> torch.Tensor:
    """TRL's vLLM importance-sampling correction (same modes and clipping), for one micro-batch."""
    diff = (mb["old_per_token_logps"] - mb["sampling_per_token_logps"]) * mb["completion_mask"]
    diff = torch.nan_to_num(diff, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=lo, max=hi)
    lo = -math.inf if lo is None else lo
    hi = math.inf if hi is None else hi
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


@contextlib.contextmanager
def score_completions_only() -> Iterator[None]:
    """Make TRL's fused LM head score only the completion positions on every device.

    TRL scores only the labelled positions where it runs Triton (CUDA/XPU), and every position elsewhere so
    that compiled backends (Neuron) keep one tile shape. On CPU that runs the fp32 LM head over the whole
    prompt: with ~170-token prompts and ~13-token completions, 13x the head's work, a third of an RL
    round for the tiny model. The per-position math is TRL's own either way; only which rows go in changes.
    """
    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type != "xla"
    try:
        yield
    finally:
        trl_utils._use_triton = original
