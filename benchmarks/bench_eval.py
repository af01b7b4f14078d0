"""Evaluation speed: the tiny model on 20 generated ALFWorld games on CPU (`gcd-trl eval`'s path end to end:
model load, env pool start, every episode, the report), and expert episodes per second per environment.

    python benchmarks/bench_eval.py [--games 20] [--alfworld-games ../shared/data/alfworld/json_2.1.1/valid_unseen]

The tiny model is the `gcd-trl tiny-model` default (random init, 4.6M parameters): it writes no tags and
never stops early, so every step is a full `max_new_tokens` completion and the env never steps. That
is the generation-bound worst case; the target is under 3 minutes on 2 cores. The expert runs in the same
`evaluate` (handcoded ALFWorld expert with the planner fallback; ScienceWorld gold paths, generated on
first use). Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _alfworld_args(data_dir: str, split: str, steps: int):
    from gcd_trl.rollout.settings import EnvArguments

    return EnvArguments(
        environment="alfworld", split=split, part="test", data_dir=data_dir, max_episode_steps=steps
    )


def bench_tiny_model(scratch: Path, games: int, num_envs: int, max_new_tokens: int, steps: int) -> dict:
    import torch

    from gcd_trl.envs.alfworld_gen import generate_games
    from gcd_trl.envs.splits import split_tasks
    from gcd_trl.eval import evaluate
    from gcd_trl.generation import HFGenerator, SamplingSettings
    from gcd_trl.tiny_model import build_tiny_model

    # one thread: the env workers use the other core, and oversubscribed threads are ~7x slower here
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model_dir = build_tiny_model(scratch / "tiny")
    games_dir = scratch / "games"
    generate_games(games_dir, games, seed=100)
    tasks = split_tasks("alfworld", "all", "test", games_dir)
    t0 = time.perf_counter()
    gen = HFGenerator.from_pretrained(
        str(model_dir), SamplingSettings(max_new_tokens=max_new_tokens), device="cpu"
    )
    report = evaluate(
        gen,
        tasks,
        _alfworld_args(str(games_dir), "all", steps),
        scratch / "eval_tiny",
        num_envs=num_envs,
        progress=False,
    )
    wall = time.perf_counter() - t0
    local = report["local"]
    return {
        "what": f"tiny model, {len(tasks)} generated games",
        "generation_s": local["time_generation_s"],
        "env_s": local["time_env_s"],
        "turns": local["turns"],
        "episodes": report["episodes"],
        "steps": round(report["mean_steps"] * report["episodes"]),
        "success_rate": report["success_rate"],
        "wall_s": round(wall, 1),
        "episodes_per_s": round(report["episodes"] / wall, 3),
        "num_envs": num_envs,
        "max_new_tokens": max_new_tokens,
    }


def bench_expert(env_name: str, scratch: Path, alfworld_games: str | None, num: int, num_envs: int) -> dict:
    from gcd_trl.envs.splits import split_tasks
    from gcd_trl.eval import ExpertPolicy, evaluate
    from gcd_trl.rollout.settings import EnvArguments

    if env_name == "alfworld":
        if alfworld_games and Path(alfworld_games).is_dir():
            tasks, source = split_tasks("alfworld", "all", "test", alfworld_games), "real valid_unseen"
            args = _alfworld_args(alfworld_games, "all", 30)
        else:
            from gcd_trl.envs.alfworld_gen import generate_games

            games_dir = scratch / "expert_games"
            generate_games(games_dir, num, seed=200)
            tasks, source = split_tasks("alfworld", "all", "test", games_dir), "generated"
            args = _alfworld_args(str(games_dir), "all", 30)
        # every task type, in split order
        by_type: dict = {}
        for t in tasks:
            by_type.setdefault(t.task_type, []).append(t)
        tasks = [t for i in range(num) for b in by_type.values() if i < len(b) for t in [b[i]]][:num]
    else:
        all_tasks = split_tasks("scienceworld", "L1", "test")
        names = sorted({t.task_name for t in all_tasks})
        tasks = [next(t for t in all_tasks if t.task_name == n) for n in names][:num]
        source = "L1 test, one variation per task"
        args = EnvArguments(environment="scienceworld", split="L1", part="test", max_episode_steps=30)
    t0 = time.perf_counter()
    report = evaluate(
        ExpertPolicy(), tasks, args, scratch / f"eval_expert_{env_name}", num_envs=num_envs, progress=False
    )
    wall = time.perf_counter() - t0
    steps = round(report["mean_steps"] * report["episodes"])
    return {
        "what": f"expert, {env_name} ({source})",
        "episodes": report["episodes"],
        "steps": steps,
        "success_rate": report["success_rate"],
        "wall_s": round(wall, 1),
        "episodes_per_s": round(report["episodes"] / wall, 3),
        "steps_per_s": round(steps / wall, 1),
        "num_envs": num_envs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--games", type=int, default=20, help="Generated games for the tiny model.")
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=30, help="max_episode_steps")
    parser.add_argument("--alfworld-games", default="../shared/data/alfworld/json_2.1.1/valid_unseen")
    parser.add_argument("--expert-episodes", type=int, default=24)
    parser.add_argument("--skip", nargs="*", default=[], choices=("tiny", "alfworld", "scienceworld"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        scratch = Path(tmp)
        if "tiny" not in args.skip:
            rows.append(bench_tiny_model(scratch, args.games, args.num_envs, args.max_new_tokens, args.steps))
            print(f"{rows[-1]['what']}: {rows[-1]['wall_s']} s", file=sys.stderr)
        for env_name in ("alfworld", "scienceworld"):
            if env_name not in args.skip:
                rows.append(bench_expert(env_name, scratch, args.alfworld_games, args.expert_episodes, 2))
                print(f"{rows[-1]['what']}: {rows[-1]['episodes_per_s']} episodes/s", file=sys.stderr)
    print("| run | episodes | steps | success | wall s | episodes/s | steps/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['what']} | {r['episodes']} | {r['steps']} | {100 * r['success_rate']:.1f}% | {r['wall_s']} | "
            f"{r['episodes_per_s']} | {r.get('steps_per_s', '-')} |"
        )
    print(json.dumps({"bench": "eval", "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
