"""Env steps per second: one in-process env vs. the EnvPool with 2 and 4 workers, side by side; and
how long a pool of 8 ALFWorld workers takes to start and reset its first games, workers spawned vs
forked from the pool's forkserver that has imported the engine (each in a fresh process, interleaved).

    python benchmarks/bench_envs.py --alfworld-games ../shared/data/alfworld/json_2.1.1/valid_unseen

ALFWorld plays random admissible actions (seeded) on the given games (or on a few generated games
when the folder is absent); ScienceWorld plays each task's gold path (the env's expert). Only step
calls are timed, after an untimed warm-up; resets are not. Prints a markdown table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gcd_trl.envs.base import EnvSpec, StepResult, Task, TextEnv
from gcd_trl.envs.pool import EnvPool
from gcd_trl.envs.registry import make_env

SCIENCEWORLD_TASKS = (
    "find-living-thing",
    "chemistry-mix",
    "measure-melting-point-known-substance",
    "grow-plant",
)


def alfworld_tasks(games_dir: str | None, num: int, scratch: str) -> list[Task]:
    if games_dir and Path(games_dir).is_dir():
        games = sorted(str(p.parent) for p in Path(games_dir).glob("**/game.tw-pddl"))
        games = random.Random(0).sample(games, min(num, len(games)))
    else:
        from gcd_trl.envs.alfworld_gen import generate_games  # no shared data: generate a few games

        print(f"no alfworld games at {games_dir!r}: generating {num}", file=sys.stderr)
        games = generate_games(scratch, num=num, seed=0)
    if not games:
        raise SystemExit(f"no alfworld games found under {games_dir}")
    return [Task(env="alfworld", game=g) for g in games]


def scienceworld_tasks(num: int) -> list[Task]:
    return [Task(env="scienceworld", task_name=name, variation=0) for name in SCIENCEWORLD_TASKS[:num]]


class Player:
    """Chooses one slot's actions and says when its episode should restart.

    ALFWorld: random admissible actions (seeded per slot). ScienceWorld: the task's gold path,
    computed once up front, so no expert call sits between steps.
    """

    def __init__(self, tasks: list[Task], gold: dict[str, list[str]], slot: int, max_steps: int) -> None:
        self.tasks, self.gold, self.max_steps = tasks, gold, max_steps
        self.rng = random.Random(slot)
        self.episode, self.steps, self.task = slot - 1, 0, tasks[0]

    def next_task(self) -> Task:
        self.episode += 1
        self.steps = 0
        self.task = self.tasks[self.episode % len(self.tasks)]
        return self.task

    def needs_reset(self, result: StepResult) -> bool:
        limit = len(self.gold[self.task.key]) if self.gold else self.max_steps
        return result.done or self.steps >= min(limit, self.max_steps)

    def action(self, result: StepResult) -> str:
        self.steps += 1
        if self.gold:
            return self.gold[self.task.key][self.steps - 1]
        return self.rng.choice(sorted(result.admissible_actions or ["look"]))


class Meter:
    """Step time and count after `warmup` untimed steps per env: a fresh JVM needs a few episodes of
    JIT compilation to reach its speed, a fresh ALFWorld process some lazy imports."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.calls, self.busy, self.steps = warmup, 0, 0.0, 0

    def add(self, seconds: float, steps: int) -> None:
        self.calls += 1
        if self.calls > self.warmup:
            self.busy, self.steps = self.busy + seconds, self.steps + steps


def gold_paths(env: TextEnv, tasks: list[Task]) -> dict[str, list[str]]:
    gold = {}
    for task in tasks:
        env.reset(task)
        gold[task.key] = env.gold_path()
    return gold


def run_single(env: TextEnv, tasks: list[Task], gold: dict, args: argparse.Namespace) -> Meter:
    player, meter = Player(tasks, gold, 0, args.max_steps), Meter(args.warmup)
    result = env.reset(player.next_task())
    while meter.busy < args.seconds:
        action = player.action(result)
        t0 = time.perf_counter()
        result = env.step(action)
        meter.add(time.perf_counter() - t0, 1)
        if player.needs_reset(result):
            result = env.reset(player.next_task())
    return meter


def run_pool(spec: EnvSpec, tasks: list[Task], gold: dict, workers: int, args: argparse.Namespace) -> Meter:
    with EnvPool(spec, workers) as pool:
        players = [Player(tasks, gold, slot, args.max_steps) for slot in range(workers)]
        results = pool.reset({slot: p.next_task() for slot, p in enumerate(players)})
        meter = Meter(args.warmup)
        while meter.busy < args.seconds:
            actions = {s: players[s].action(results[s]) for s in range(workers)}
            t0 = time.perf_counter()
            results = pool.step(actions)
            meter.add(time.perf_counter() - t0, workers)
            ended = {s: players[s].next_task() for s in range(workers) if players[s].needs_reset(results[s])}
            if ended:
                results.update(pool.reset(ended))
        if pool.stats["aborted"]:
            print(f"warning: {spec.env} pool aborted episodes: {pool.stats}", file=sys.stderr)
    return meter


def pool_start(games: list[str], method: str) -> float:
    """Seconds from creating an ALFWorld pool of one worker per game to the end of its first reset (call
    it in a fresh process: the forkserver, once started, serves every later pool of that process)."""
    t0 = time.perf_counter()
    with EnvPool(EnvSpec("alfworld"), len(games), start_method=method) as pool:
        pool.reset({slot: Task(env="alfworld", game=game) for slot, game in enumerate(games)})
        return time.perf_counter() - t0


def pool_start_rows(games: list[str], repeats: int) -> list[dict]:
    """Median start-up of each method, `repeats` fresh processes each, the methods interleaved."""
    here = str(Path(__file__).resolve().parent)
    times: dict[str, list[float]] = {"spawn": [], "forkserver": []}
    for _ in range(repeats):
        for method in times:
            code = (
                f"import sys; sys.path.insert(0, {here!r}); from bench_envs import pool_start; "
                f"print(pool_start({games!r}, {method!r}))"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times[method].append(float(out.stdout.strip().splitlines()[-1]))
    return [
        {"method": m, "workers": len(games), "median_s": round(statistics.median(t), 2), "runs": t}
        for m, t in times.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alfworld-games", default="../shared/data/alfworld/json_2.1.1/valid_unseen")
    parser.add_argument(
        "--envs", nargs="+", default=["alfworld", "scienceworld"], choices=["alfworld", "scienceworld"]
    )
    parser.add_argument("--workers", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed step seconds per configuration")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per env first (default: alfworld 5, scienceworld 60)",
    )
    parser.add_argument("--max-steps", type=int, default=30, help="episode length cap before a reset")
    parser.add_argument("--start-repeats", type=int, default=3, help="fresh processes per start-up method")
    args = parser.parse_args()

    rows, start_games = [], []
    scratch = tempfile.mkdtemp(prefix="bench_envs_")  # generated alfworld games, when needed
    for env_name in args.envs:
        spec = EnvSpec(env_name)
        warmup = {"alfworld": 5, "scienceworld": 60}[env_name] if args.warmup is None else args.warmup
        opts = argparse.Namespace(**{**vars(args), "warmup": warmup})
        tasks = (
            alfworld_tasks(args.alfworld_games, 8, scratch)
            if env_name == "alfworld"
            else scienceworld_tasks(4)
        )
        if env_name == "alfworld":
            start_games = [t.game for t in tasks]  # the same 8 games for the start-up comparison
        gold = {}
        if env_name == "scienceworld":
            with make_env(spec) as env:  # not the timed env: every timed env starts equally cold
                gold = gold_paths(env, tasks)
        with make_env(spec) as env:
            runs = [("in-process", 1, run_single(env, tasks, gold, opts))]
        for workers in args.workers:
            runs.append(("pool", workers, run_pool(spec, tasks, gold, workers, opts)))
        for mode, workers, meter in runs:
            row = {"env": env_name, "mode": mode, "workers": workers, "steps": meter.steps}
            row.update(seconds=round(meter.busy, 2), steps_per_s=round(meter.steps / meter.busy, 1))
            rows.append(row)
            print(f"{env_name} {mode} x{workers}: {row['steps_per_s']} steps/s", file=sys.stderr)

    print("| env | mode | workers | steps | step seconds | steps/s | vs in-process |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(r for r in rows if r["env"] == row["env"] and r["mode"] == "in-process")["steps_per_s"]
        print(
            f"| {row['env']} | {row['mode']} | {row['workers']} | {row['steps']} | {row['seconds']} "
            f"| {row['steps_per_s']} | {row['steps_per_s'] / base:.2f}x |"
        )
    starts = pool_start_rows(start_games, args.start_repeats) if start_games else []
    shutil.rmtree(scratch, ignore_errors=True)
    if starts:
        spawn = starts[0]["median_s"]
        print("\n| ALFWorld pool of 8: start + first resets | median seconds | vs spawn |")
        print("|---|---|---|")
        for row in starts:
            print(f"| {row['method']} | {row['median_s']} | {row['median_s'] / spawn:.2f}x |")
    print(json.dumps({"bench": "envs", "results": rows, "pool_start": starts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
