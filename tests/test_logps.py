"""The log-prob pass scores only completion positions on CPU, with TRL's own per-position math."""

from __future__ import annotations

import contextlib

import torch
import trl.kernels.chunked_logprob as chunked
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from gcd_trl.trainers.logps import score_completions_only


def _scored(model, input_ids, labels, keep, ctx):
    """Log-probs and entropies of the last `keep` positions, the embedding gradient, and how many rows the
    fused LM head scored."""
    rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        rows.append(hidden.shape[0])
        return apply(hidden, *args)

    model.zero_grad()
    original = trl_utils._ChunkedLogProbFunction
    trl_utils._ChunkedLogProbFunction = type("Counting", (), {"apply": staticmethod(counting)})
    try:
        with ctx:
            out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    finally:
        trl_utils._ChunkedLogProbFunction = original
    logps, entropy = out.log_probs[:, -keep:], out.entropy[:, -keep:]
    (logps.sum() + entropy.sum()).backward()
    return logps.detach(), entropy.detach(), model.get_input_embeddings().weight.grad.clone(), sum(rows)


def test_completion_only_scoring_matches_every_position(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model, temperature=0.7, cast_lm_head_to_fp32=True, outputs=("log_probs", "entropy"))
    batch, length, keep = 3, 40, 6
    input_ids = torch.randint(5, model.config.vocab_size, (batch, length))
    labels = input_ids.clone()
    labels[:, :-keep] = -100
    labels[0, -2:] = -100  # a shorter completion: its padding is not scored either

    full = _scored(model, input_ids, labels, keep, contextlib.nullcontext())
    compact = _scored(model, input_ids, labels, keep, score_completions_only())

    assert full[3] == batch * (length - 1)  # TRL off Triton: every position goes through the LM head
    assert compact[3] == batch * keep - 2  # ours: the labelled completion tokens only
    torch.testing.assert_close(compact[0], full[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(compact[1], full[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(compact[2], full[2], rtol=1e-4, atol=1e-7)
    assert trl_utils._use_triton is chunked._use_triton  # restored after the pass
