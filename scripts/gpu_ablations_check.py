"""GPU check of the paper's baselines (PPO's critic, NTHR, the value-head classifier) in bf16 on one CUDA GPU.

No env and no hub: a locally built random Qwen2 (default 0.3B: hidden 896, 24 layers, the Qwen2.5-0.5B body)
and hand-made step samples of realistic size (prompt 400-600 tokens, completion 40-120). For each trainer it
times one optimizer step's work after the rollout (advantages incl. the critic's values, NTHR's features,
cutting into micro-batches, the actor's forward/backward, the critic's) and checks the losses and metrics are
finite; the medians of `--repeats` runs are printed and written to OUT/gpu_ablations.json.

    PYTHONPATH=src python3 scripts/gpu_ablations_check.py [--out DIR] [--samples 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def samples_for(vocab: int, n: int, seed: int = 0):
    from gcd_trl.rollout.episode import StepRecord
    from gcd_trl.rollout.samples import AgentSample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        traj, step = i % 8, i // 8
        rec = StepRecord(
            group=i % 2,
            traj=traj,
            step=step,
            anchor=f"room {rng.randrange(4)}",
            prompt="",
            completion="",
            action="a",
            valid=rng.random() > 0.1,
            reason=None,
            tag=None,
            env_reward=0.0,
            done=False,
            won=traj < 3,
        )
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(400, 600))]
        completion = [rng.randrange(3, vocab) for _ in range(rng.randint(40, 120))]
        adv = (1.0 if traj < 3 else -1.0) * rng.uniform(0.3, 1.5)
        out.append(AgentSample(prompt, completion, advantage=adv, record=rec))
    return out


def build(model_dir: str, out_dir: str, **over):
    from datasets import Dataset

    from gcd_trl.envs.base import Task
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.run import trainer_class

    kwargs = dict(
        output_dir=out_dir,
        bf16=True,
        report_to="none",
        num_generations=8,
        tasks_per_round=2,
        max_completion_length=128,
        max_tokens_per_microbatch=16384,
        learning_rate=1e-6,
        loss_type="dapo",
        beta=0.0,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=True,
        seed=0,
        disable_tqdm=True,
        model_init_kwargs={"dtype": "bfloat16"},
    )
    kwargs.update(over)
    args = AgentGRPOConfig(**kwargs)
    tasks = Dataset.from_list([Task("scienceworld", task_name="boil", variation=0).to_dict()])
    cls = trainer_class(args)
    trainer = cls(
        model_dir, args=args, train_dataset=tasks, env_args=EnvArguments(environment="scienceworld")
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    return trainer


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_step(trainer, samples) -> tuple[float, float]:
    _sync()
    t = time.perf_counter()
    for s, a in zip(samples, trainer._advantages(samples)):
        s.advantage = float(a)
    if trainer._wants_labels():  # the value head's targets: the GCD rule labels, as a round sets them
        from gcd_trl.gcd.cotrain import label_samples

        label_samples(samples, 0)
    rnd = trainer._make_round(samples, 0)
    trainer._round = rnd
    model = trainer.model
    model.train()
    loss = trainer._accumulate(model, rnd.updates[0])
    if getattr(trainer, "value_head", None) is not None:
        trainer._step_value_head()
    trainer.optimizer.step()
    model.zero_grad(set_to_none=True)
    _sync()
    return time.perf_counter() - t, float(loss)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "outputs/gpu_ablations"))
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--cpu", action="store_true", help="a dry run on the CPU (fp32), for checking the script")
    a = p.parse_args()
    import torch

    cpu = a.cpu or not torch.cuda.is_available()
    if cpu:
        torch.set_num_threads(1)

    from gcd_trl.tiny_model import build_tiny_model

    torch.backends.cuda.enable_cudnn_sdp(False)  # as gcd-trl rl does on GPUs (left-padded bf16 rows)
    os.makedirs(a.out, exist_ok=True)
    model_dir = str(
        build_tiny_model(
            os.path.join("/tmp", "gpu_ablations_model"), hidden_size=a.hidden, num_layers=a.layers
        )
    )
    runs = {
        "grpo": {},
        "ppo (gae + critic)": {"advantage_estimator": "gae"},
        "grpo_nthr": {"nthr": True},
        "grpo + value head": {"value_head_coef": 1.0},
    }
    device = "cpu" if cpu else torch.cuda.get_device_name(0)
    report: dict = {
        "device": device,
        "samples": a.samples,
        "model": f"hidden {a.hidden}, {a.layers} layers",
        "runs": {},
    }
    for name, over in runs.items():
        if cpu:
            over = {
                **over,
                "use_cpu": True,
                "bf16": False,
                "model_init_kwargs": {},
                "gradient_checkpointing": False,
            }
        trainer = build(model_dir, f"/tmp/gpu_ablations_{len(report['runs'])}", **over)
        times, losses = [], []
        for r in range(a.repeats + 1):
            trainer._metrics["train"].clear()
            samples = samples_for(trainer.model.config.vocab_size, a.samples, seed=r)
            elapsed, loss = one_step(trainer, samples)
            if r:  # the first step warms up kernels
                times.append(elapsed)
            losses.append(loss)
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
        finite = all(math.isfinite(x) for x in losses) and all(
            math.isfinite(v) for k, v in metrics.items() if isinstance(v, float)
        )
        keep = ("critic/", "nthr/", "value_head/", "time/", "entropy")
        report["runs"][name] = {
            "step_seconds_median": round(statistics.median(times), 3),
            "step_seconds": [round(x, 3) for x in times],
            "losses": [round(x, 5) for x in losses],
            "finite": finite,
            "peak_gpu_gib": 0.0 if cpu else round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "metrics": {k: round(v, 5) for k, v in metrics.items() if k.startswith(keep)},
        }
        print(name, json.dumps(report["runs"][name]), flush=True)
        del trainer
        if not cpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    base = report["runs"]["grpo"]["step_seconds_median"]
    for r in report["runs"].values():
        r["vs_grpo"] = round(r["step_seconds_median"] / base, 2)
    with open(os.path.join(a.out, "gpu_ablations.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(
        json.dumps(
            {k: (v["step_seconds_median"], v["vs_grpo"], v["finite"]) for k, v in report["runs"].items()}
        )
    )
    return 0 if all(r["finite"] for r in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
