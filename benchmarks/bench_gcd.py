"""A training round with GCD on against off, side by side, at the same rollout size (target: < 15% more).

The tiny model plays generated ALFWorld games with TRL's own generation (transformers `generate`), so the
round holds real generation, env steps, advantages and the optimizer step. With GCD on, the round also
labels its steps (rules), asks the policy to judge some of them (G_judge = 4 answers each, one batched
generate) and trains on those answers too. The judge load per episode is the shipped defaults' (16 judge
prompts per 16 tasks x 8 episodes: 1/8 prompt per episode). What the judge costs relative to the round
depends on episode length: a round pays one extra generate call and 4 answers per 8 episodes, however many
steps those episodes took. Two episode caps are measured: 24 steps (about the recipes' judge-to-step ratio:
ALFWorld rounds run up to 50 steps) and 6 steps (short episodes, the worst case). Rounds of the two trainers
alternate, so load changes hit both alike; the median round is reported as wall time and as this process's
CPU time (generation and training; the env workers are processes of their own), which a shared machine's
load inflates less. The default takes 6 rounds: with 2, one slow round moves the median and the ratio.

    .venv/bin/python benchmarks/bench_gcd.py [--rounds 6] [--tasks 2] [--group 4] [--steps 24 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(model_dir, out_dir, tasks, pool, gcd: bool, a):
    from datasets import Dataset

    from gcd_trl.gcd.args import GCDArguments
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    episodes = a.tasks * a.group
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
    )
    env_args = EnvArguments(environment="alfworld", split="all", max_episode_steps=a.steps_now)
    gcd_args = GCDArguments(
        gcd=gcd,
        judge_prompts_per_round=max(1, episodes // 8),
        judge_num_generations=4,
        judge_class_balance=False,  # a random model never wins: only "bad" labels exist
        correction=False,
    )
    trainer = AgentGRPOTrainer(
        model_dir,
        args=args,
        train_dataset=Dataset.from_list(tasks),
        env_args=env_args,
        env_pool=pool,
        gcd_args=gcd_args,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    return trainer


def one_round(trainer) -> tuple[float, float, dict]:
    """One round: (wall seconds, CPU seconds of this process, the round's metrics)."""
    model = trainer.model
    wall, cpu = time.perf_counter(), time.process_time()
    trainer._queue.clear()
    trainer.training_step(model, [{}])
    trainer.optimizer.step()
    model.zero_grad()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    m = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
    trainer._metrics["train"].clear()
    return wall, cpu, m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="Measured rounds per trainer (after a warm-up); the median counts.",
    )
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[24, 6], help="Episode caps to measure.")
    a = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games
    from gcd_trl.envs.base import EnvSpec, Task
    from gcd_trl.envs.pool import EnvPool
    from gcd_trl.tiny_model import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(os.path.join(tmp, "tiny")))
        games = generate_games(os.path.join(tmp, "games"), a.tasks, seed=0)
        tasks = [Task("alfworld", split="all", game=g, task_type=task_type_of(g)).to_dict() for g in games]
        pool = EnvPool(EnvSpec("alfworld"), a.tasks * a.group)
        try:
            for steps in a.steps:
                a.steps_now = steps
                runs = {
                    "GCD off": build(model_dir, os.path.join(tmp, f"off{steps}"), tasks, pool, False, a),
                    "GCD on": build(model_dir, os.path.join(tmp, f"on{steps}"), tasks, pool, True, a),
                }
                for trainer in runs.values():
                    one_round(trainer)  # warm-up
                wall = {k: [] for k in runs}
                cpu = {k: [] for k in runs}
                last = {}
                for _ in range(a.rounds):
                    for name, trainer in runs.items():
                        w, c, metrics = one_round(trainer)
                        wall[name].append(w)
                        cpu[name].append(c)
                        last[name] = metrics
                base_w, base_c = statistics.median(wall["GCD off"]), statistics.median(cpu["GCD off"])
                for name in runs:
                    w, c = statistics.median(wall[name]), statistics.median(cpu[name])
                    rows.append((steps, name, w, w / base_w, c, c / base_c, last[name]))
        finally:
            pool.close()
    print(
        f"round of {a.tasks} tasks x G={a.group}, tiny model on CPU, 1 thread, "
        f"median of {a.rounds} interleaved rounds (wall; CPU: this process)"
    )
    print(
        f"{'steps':>6}  {'':<8}{'wall s':>8}{'vs off':>8}{'CPU s':>8}{'vs off':>8}{'samples':>9}"
        f"{'judge prompts':>15}{'judge tokens':>14}"
    )
    for steps, name, w, w_ratio, c, c_ratio, m in rows:
        share = m.get("judge/token_share", 0.0)
        print(
            f"{steps:>6}  {name:<8}{w:>8.2f}{w_ratio:>7.2f}x{c:>8.2f}{c_ratio:>7.2f}x"
            f"{m.get('rollout/samples', 0):>9.0f}{m.get('judge/prompts', 0):>15.0f}{share:>13.1%}"
        )


if __name__ == "__main__":
    main()
