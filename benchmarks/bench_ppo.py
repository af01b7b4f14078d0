"""A PPO round (critic + token-level GAE) against a GRPO round, side by side (also GRPO_nthr and the value head).

The tiny model plays generated ALFWorld games with TRL's own generation (transformers `generate`), so each
round holds real generation, env steps, advantages and the optimizer step. PPO adds the critic: its values
for every completion token before the update, and its own forward/backward on the same micro-batches after
the actor's (the critic is a copy of the actor's body, so this is the cost of a second model). GRPO_nthr
adds one no-grad forward of the policy over the groups' positive and negative samples; the value head adds
a linear layer on hidden states the loss forward already has. Rounds of the trainers alternate, so load
changes hit them alike; the median round is reported as wall time and as this process's CPU time (the env
workers are processes of their own; CPU time is less inflated by a shared machine's load), with the wall
time of the update alone. The default takes 6 rounds: with 3, one slow round moves the median.

    .venv/bin/python benchmarks/bench_ppo.py [--rounds 6] [--tasks 4] [--group 4] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench_gcd import one_round  # noqa: E402  (the same timed round: one training_step + optimizer step)

ARMS = {
    "GRPO": {},
    "PPO": {"advantage_estimator": "gae", "critic_learning_rate": 1e-4},
    "GRPO_nthr": {"nthr": True},
    "value head": {"value_head_coef": 1.0},
}


def build(model_dir, out_dir, tasks, pool, overrides: dict, a):
    from datasets import Dataset

    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.run import trainer_class

    args = AgentGRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        report_to="none",
        num_generations=a.group,
        tasks_per_round=a.tasks,
        max_completion_length=24,
        max_tokens_per_microbatch=8192,
        learning_rate=1e-4,
        activation_checkpointing=False,
        save_strategy="no",
        save_rollouts=False,
        logging_steps=1,
        max_steps=10_000,
        disable_tqdm=True,
        seed=0,
        **overrides,
    )
    env_args = EnvArguments(environment="alfworld", split="all", max_episode_steps=a.steps)
    trainer = trainer_class(args)(
        model_dir, args=args, train_dataset=Dataset.from_list(tasks), env_args=env_args, env_pool=pool
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="Measured rounds per trainer (after a warm-up); the median counts.",
    )
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    a = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games
    from gcd_trl.envs.base import EnvSpec, Task
    from gcd_trl.envs.pool import EnvPool
    from gcd_trl.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(os.path.join(tmp, "tiny")))
        games = generate_games(os.path.join(tmp, "games"), a.tasks, seed=0)
        tasks = [Task("alfworld", split="all", game=g, task_type=task_type_of(g)).to_dict() for g in games]
        pool = EnvPool(EnvSpec("alfworld"), a.tasks * a.group)
        try:
            runs = {
                name: build(model_dir, os.path.join(tmp, str(i)), tasks, pool, over, a)
                for i, (name, over) in enumerate(ARMS.items())
            }
            for trainer in runs.values():
                one_round(trainer)  # warm-up
            times = {k: [] for k in runs}
            cpu = {k: [] for k in runs}
            updates = {k: [] for k in runs}
            last = {}
            for _ in range(a.rounds):
                for name, trainer in runs.items():
                    elapsed, cpu_s, metrics = one_round(trainer)
                    times[name].append(elapsed)
                    cpu[name].append(cpu_s)
                    # the update: everything after the rollout (advantages, critic values, NTHR, backward)
                    rollout = metrics.get("time/generation", 0.0) + metrics.get("time/env", 0.0)
                    updates[name].append(elapsed - rollout)
                    last[name] = metrics
        finally:
            pool.close()
    base = statistics.median(times["GRPO"])
    base_cpu = statistics.median(cpu["GRPO"])
    base_update = statistics.median(updates["GRPO"])
    print(
        f"round of {a.tasks} tasks x G={a.group}, {a.steps} steps max, tiny model on CPU, 1 thread, "
        f"median of {a.rounds} interleaved rounds (wall; CPU: this process)"
    )
    print(
        f"{'':<12}{'wall s':>8}{'vs GRPO':>9}{'CPU s':>8}{'vs GRPO':>9}{'update s':>10}{'vs GRPO':>9}"
        f"{'samples':>9}  extra"
    )
    for name in runs:
        m = last[name]
        med, upd = statistics.median(times[name]), statistics.median(updates[name])
        c = statistics.median(cpu[name])
        extra = ""
        if "critic/value_loss" in m:
            extra = f"value loss {m['critic/value_loss']:.3f}, explained var {m.get('critic/explained_variance', 0):.2f}"
        elif "nthr/selected_token_fraction" in m:
            extra = f"nthr selected {m['nthr/selected_token_fraction']:.1%} of negative tokens"
        elif "value_head/loss" in m:
            extra = f"value-head BCE {m['value_head/loss']:.3f}"
        print(
            f"{name:<12}{med:>8.2f}{med / base:>8.2f}x{c:>8.2f}{c / base_cpu:>8.2f}x"
            f"{upd:>10.2f}{upd / base_update:>8.2f}x"
            f"{m.get('rollout/samples', 0):>9.0f}  {extra}"
        )


if __name__ == "__main__":
    main()
