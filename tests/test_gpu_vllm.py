"""vLLM colocate on a real GPU: episodes are generated through TRL's vLLM backend, its log-probs match the
trainer's, and vLLM follows the trainer's weights after a step (a stale copy is caught). Skipped without
a CUDA GPU and vLLM, as on CI; run `pytest -m gpu` on a GPU machine with `pip install -e '.[vllm]'`."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPTS = [
    "You are in the middle of a room. Looking quickly around you, you see a desk 1, a shelf 2 and a "
    "drawer 1. Your task is to: put a mug on the desk.",
    "You arrive at the kitchen. On the countertop 1, you see an apple 1. Your task is to: heat an apple.",
] * 3


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    pytest.importorskip("vllm", reason="needs vLLM (pip install -e '.[vllm]')")
    from gcd_trl.commands.rl import build_trainer, prepare
    from gcd_trl.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("vllm")
    model = build_tiny_model(tmp / "model", hidden_size=256, num_layers=4)
    args = ["--config", "configs/rl/tiny_alfworld_grpo.yaml", "--model_name_or_path", str(model)]
    args += ["--data_dir", str(tmp / "games"), "--generate_games", "2", "--output_dir", str(tmp / "out")]
    args += ["--use_cpu", "false", "--bf16", "true", "--use_vllm", "true", "--vllm_mode", "colocate"]
    args += ["--vllm_gpu_memory_utilization", "0.2", "--vllm_max_model_length", "1024"]
    args += ["--max_completion_length", "32", "--report_to", "none"]
    t = build_trainer(*prepare(args))
    yield t
    t.close()


def _logp_gap(trainer) -> float:
    """Mean |trainer - vLLM| log-prob over the tokens vLLM just sampled for PROMPTS."""
    gens = trainer._generate_turn(PROMPTS)
    gaps = []
    with torch.no_grad():
        for g in gens:
            assert g.logprobs is not None and len(g.logprobs) == len(g.completion_ids) > 0
            ids = torch.tensor([g.prompt_ids + g.completion_ids], device=trainer.accelerator.device)
            hf = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, torch.ones_like(ids), len(g.completion_ids)
            )[0][0]
            gaps.append((hf.float().cpu() - torch.tensor(g.logprobs)).abs())
    return torch.cat(gaps).mean().item()


def test_vllm_logprobs_follow_trainer_weights(trainer):
    in_sync = _logp_gap(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)  # sharpens every next-token distribution
    stale = _logp_gap(trainer)  # same global step: TRL does not sync, vLLM still has the old weights
    trainer.state.global_step += 1
    synced = _logp_gap(trainer)  # a new step: weights are pushed to vLLM before generating
    print(f"log-prob gap: in sync {in_sync:.4f}, stale {stale:.4f}, after sync {synced:.4f}")
    assert in_sync < 0.05
    assert stale > 0.5
    assert synced < stale / 10
