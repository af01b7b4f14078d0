"""Run by tests/test_gpu_vllm.py in a fresh process (one colocated vLLM engine per process): builds the
trainer with vLLM colocate, then prints, as JSON, the mean |trainer - vLLM| log-prob gap of freshly
sampled tokens while in sync, after the trainer's weights change without a sync, and after the sync.

    python tests/gpu_vllm_probe.py full|lora WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

PROMPTS = [
    "You are in the middle of a room. Looking quickly around you, you see a desk 1, a shelf 2 and a "
    "drawer 1. Your task is to: put a mug on the desk.",
    "You arrive at the kitchen. On the countertop 1, you see an apple 1. Your task is to: heat an apple.",
] * 3


def logp_gap(trainer) -> float:
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


def change_weights(trainer, mode: str) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        if mode == "lora":
            for name, p in model.named_parameters():
                if "lora_B" in name:  # B starts at 0: the adapter adds nothing until it is trained
                    p.normal_(0.0, 0.5)
        else:
            model.model.norm.weight.mul_(30.0)  # sharpens every next-token distribution


def main(mode: str, work: Path) -> None:
    from gcd_trl.tiny_model import build_tiny_model
    from gcd_trl.trainers.run import build_trainer, prepare

    model = build_tiny_model(work / "model", hidden_size=256, num_layers=4)
    args = ["--config", "configs/rl/tiny_alfworld_grpo.yaml", "--model_name_or_path", str(model)]
    args += ["--data_dir", str(work / "games"), "--generate_games", "2", "--output_dir", str(work / "out")]
    args += ["--use_cpu", "false", "--bf16", "true", "--use_vllm", "true", "--vllm_mode", "colocate"]
    args += ["--vllm_gpu_memory_utilization", "0.2", "--vllm_max_model_length", "1024"]
    args += ["--max_completion_length", "32", "--report_to", "none"]
    if mode == "lora":
        args += ["--use_peft", "true", "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj"]
    trainer = build_trainer(*prepare(args))
    try:
        in_sync = logp_gap(trainer)
        change_weights(trainer, mode)
        stale = logp_gap(trainer)  # same global step: TRL does not sync, vLLM keeps the old weights
        trainer.state.global_step += 1
        synced = logp_gap(trainer)  # a new step: the weights are pushed to vLLM before generating
    finally:
        trainer.close()
    print("GAPS " + json.dumps({"in_sync": in_sync, "stale": stale, "synced": synced}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
