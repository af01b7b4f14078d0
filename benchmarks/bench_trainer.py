"""One optimizer step: AgentGRPOTrainer vs stock trl.GRPOTrainer on the same batch (target: within 10%).

Both trainers get the same model weights, the same B prompts and completions (random token ids of fixed
lengths, like agent steps: a long prompt, a short completion) and the same advantages; generation is left
out (it is the same TRL call in both). One optimizer step is: loss + backward over the batch, gradient
clipping, optimizer step, zero grad. Stock TRL does it in one forward/backward (per_device_train_batch_size =
B); ours builds the step's micro-batches (`_make_update`, included in the time) and runs them, once with a
budget that fits the whole batch and once cut into 4 micro-batches. Measurements are interleaved and the
median is reported, as wall and as CPU time (less inflated on a shared machine).

    .venv/bin/python benchmarks/bench_trainer.py [--model DIR] [--batch 16] [--prompt-len 180]
        [--completion-len 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_batch(vocab: int, batch: int, prompt_len: int, completion_len: int, seed: int = 0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(10, vocab) for _ in range(prompt_len)] for _ in range(batch)]
    completions = [[rng.randrange(10, vocab) for _ in range(completion_len)] for _ in range(batch)]
    advantages = [rng.uniform(-1, 1) for _ in range(batch)]
    return prompts, completions, advantages


def stock_trainer(model_dir: str, out_dir: str, batch: int, prompts, completions, advantages):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=batch,
        num_generations=2,
        max_completion_length=len(completions[0]),
        learning_rate=1e-5,
        activation_checkpointing=False,
        loss_type="dapo",
        seed=0,
    )
    trainer = GRPOTrainer(
        model_dir,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * batch}),
    )
    inputs = {
        "prompt_ids": torch.tensor(prompts),
        "prompt_mask": torch.ones(len(prompts), len(prompts[0]), dtype=torch.long),
        "completion_ids": torch.tensor(completions),
        "completion_mask": torch.ones(len(completions), len(completions[0]), dtype=torch.long),
        "advantages": torch.tensor(advantages),
        "num_items_in_batch": torch.tensor(float(sum(map(len, completions)))),
    }
    trainer._prepare_inputs = lambda _batch: inputs  # generation left out: the same TRL call in both
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer()
    model = trainer.model
    model.train()

    def step():
        trainer.training_step(model, [{}], None)
        trainer.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        model.zero_grad()

    return step


def agent_trainer(model_dir: str, out_dir: str, budget: int, prompts, completions, advantages):
    from datasets import Dataset

    from gcd_trl.envs.base import Task
    from gcd_trl.rollout.episode import StepRecord
    from gcd_trl.rollout.samples import AgentSample
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    args = AgentGRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        num_generations=2,
        tasks_per_round=1,
        max_completion_length=len(completions[0]),
        max_tokens_per_microbatch=budget,
        learning_rate=1e-5,
        activation_checkpointing=False,
        loss_type="dapo",
        seed=0,
    )
    task = Task("scienceworld", task_name="boil", variation=0).to_dict()
    trainer = AgentGRPOTrainer(
        model_dir,
        args=args,
        train_dataset=Dataset.from_list([task]),
        env_args=EnvArguments(environment="scienceworld"),
    )
    samples = []
    for i, (p, c, a) in enumerate(zip(prompts, completions, advantages)):
        rec = StepRecord(
            group=0,
            traj=i % 2,
            step=i // 2,
            anchor="",
            prompt="",
            completion="",
            action="a",
            valid=True,
            reason=None,
            tag=None,
            env_reward=0.0,
            done=False,
            won=False,
        )
        samples.append(AgentSample(p, c, advantage=a, record=rec))
    trainer.create_optimizer()
    model = trainer.model
    model.train()
    info = {}

    def step():
        rnd = trainer._make_update(samples)
        info["microbatches"] = len(rnd.microbatches)
        trainer._accumulate(model, rnd)
        trainer.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        model.zero_grad()

    return step, info


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="model directory (default: build the tiny model, hidden 256, 4 layers)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=180)
    parser.add_argument("--completion-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from gcd_trl.tiny_model import build_tiny_model

            model_dir = str(build_tiny_model(os.path.join(tmp, "tiny")))
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
        data = make_batch(vocab, args.batch, args.prompt_len, args.completion_len)
        full = args.batch * (args.prompt_len + args.completion_len)
        runs = {
            "trl.GRPOTrainer (1 pass)": (
                stock_trainer(model_dir, os.path.join(tmp, "s"), args.batch, *data),
                None,
            ),
            "AgentGRPOTrainer (1 micro-batch)": agent_trainer(
                model_dir, os.path.join(tmp, "a1"), full, *data
            ),
            "AgentGRPOTrainer (4 micro-batches)": agent_trainer(
                model_dir, os.path.join(tmp, "a4"), full // 4, *data
            ),
        }
        for fn, _ in runs.values():  # warm-up
            fn()
            fn()
        wall = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for name, (fn, _) in runs.items():
                w, c = timed(fn)
                wall[name].append(w)
                cpu[name].append(c)
    base_w = statistics.median(wall["trl.GRPOTrainer (1 pass)"])
    base_c = statistics.median(cpu["trl.GRPOTrainer (1 pass)"])
    print(
        f"optimizer step, B={args.batch} samples x "
        f"({args.prompt_len} prompt + {args.completion_len} completion) "
        f"tokens, torch threads={args.threads}, median of {args.repeats}"
    )
    print(f"{'trainer':<38}{'micro-batches':>14}{'wall s':>10}{'vs TRL':>9}{'CPU s':>10}{'vs TRL':>9}")
    for name, (_, info) in runs.items():
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        mbs = 1 if info is None else info["microbatches"]
        print(f"{name:<38}{mbs:>14}{w:>10.4f}{w / base_w:>8.2f}x{c:>10.4f}{c / base_c:>8.2f}x")


if __name__ == "__main__":
    main()
