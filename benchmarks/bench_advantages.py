"""Throughput of the advantage estimators at 1M steps (target: < 2 s per estimator).

Realistic shape: groups of 8 trajectories of ~20 steps (5-35), string group keys, trajectory ids 0-7 inside
each group, anchors drawn from a per-group pool of 30 observations (so step groups repeat), 40% of
episodes won, 10% invalid steps, random tags and actions.

    .venv/bin/python benchmarks/bench_advantages.py [--steps 1000000] [--records]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from gcd_trl.advantages import AdvantageConfig, StepBatch, compute_advantage_terms, records_to_batch
from gcd_trl.advantages.common import TAGS


def make_columns(n_steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 36, size=n_steps // 5)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_steps) + 1]
    lengths[-1] -= lengths.sum() - n_steps
    lengths = lengths[lengths > 0]
    n_traj = len(lengths)
    traj_global = np.repeat(np.arange(n_traj), lengths)
    group_id = traj_global // 8
    group = [f"alfworld:task-{g}" for g in group_id.tolist()]  # like StepRecord: a task key per group
    traj = traj_global % 8  # the rollout's index inside its group
    step = np.arange(n_steps) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    won = rng.random(n_traj) < 0.4
    episode_reward = np.repeat(won.astype(float), lengths)
    is_last = step == np.repeat(lengths - 1, lengths)
    step_reward = np.where(is_last, episode_reward, 0.0)
    anchor_id = group_id * 30 + rng.integers(0, 30, size=n_steps)
    pool = [
        f"You are in room {i // 30}. You see object {i % 30} and a long description of the scene."
        for i in range(int(anchor_id.max()) + 1)
    ]
    anchor = [pool[i] for i in anchor_id.tolist()]
    actions = [f"go to place {i}" for i in range(40)]
    action = [actions[i] for i in rng.integers(0, 40, size=n_steps).tolist()]
    tag = [TAGS[i] for i in rng.integers(0, len(TAGS), size=n_steps).tolist()]
    return dict(
        group=group,
        traj=traj,
        step=step,
        episode_reward=episode_reward,
        step_reward=step_reward,
        invalid=rng.random(n_steps) < 0.1,
        anchor=anchor,
        tag=tag,
        action=action,
    )


def best_of(fn, repeats: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of `repeats` runs; CPU time is less inflated on a shared, loaded machine."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def report(label: str, n: int, times: tuple[float, float], unit: str = "steps") -> None:
    wall, cpu = times
    print(
        f"{label:55s} wall {wall:6.3f} s ({n / wall / 1e6:5.2f} M {unit}/s)   cpu {cpu:6.3f} s "
        f"({n / cpu / 1e6:5.2f} M {unit}/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", action="store_true", help="Also time records_to_batch on step dicts.")
    parser.add_argument(
        "--similarity-steps",
        type=int,
        default=20_000,
        help="Steps for the (non-vectorised) GiGPO similarity grouping run; 0 to skip.",
    )
    args = parser.parse_args()
    n = args.steps

    cols = make_columns(n)
    t_build = best_of(lambda: StepBatch.from_columns(**cols), 1)
    batch = StepBatch.from_columns(**cols)
    print(
        f"{n} steps, {int(batch.traj.max()) + 1} trajectories, {batch.n_groups} groups, "
        f"{len(batch.anchor_values)} distinct anchors; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    report("StepBatch.from_columns (hash strings, sort, checks)", n, t_build)
    for estimator in ("grpo", "gigpo", "rlvmr"):
        config = AdvantageConfig(estimator=estimator)
        report(
            f"{estimator}: advantages of a built batch",
            n,
            best_of(lambda c=config: compute_advantage_terms(batch, c), args.repeats),
        )
        report(
            f"{estimator}: columns -> batch -> advantages",
            n,
            best_of(lambda c=config: compute_advantage_terms(StepBatch.from_columns(**cols), c), 1),
        )

    if args.records:
        keys = list(cols)
        values = [c.tolist() if isinstance(c, np.ndarray) else c for c in cols.values()]
        records = [dict(zip(keys, row)) for row in zip(*values)]
        for estimator in ("grpo", "gigpo", "rlvmr"):
            report(
                f"records_to_batch(records, {estimator!r})",
                n,
                best_of(lambda e=estimator: records_to_batch(records, e), 1),
                "records",
            )

    if args.similarity_steps:
        m = args.similarity_steps
        small = StepBatch.from_columns(**make_columns(m, seed=1))
        config = AdvantageConfig(estimator="gigpo", similarity_threshold=0.95)
        report(
            f"gigpo, similarity_threshold=0.95, {m} steps",
            m,
            best_of(lambda: compute_advantage_terms(small, config), 1),
        )


if __name__ == "__main__":
    main()
