"""What an RL run reports: each round's metrics (rollout, advantages, batching, time), success per task
type, TRL's completions table, the sampling gap of vLLM, and the run's `summary.json`.

Every number is over all processes (`gcd_trl.dist`); metrics go into the trainer's `_metrics["train"]`
lists, which TRL averages and logs at each logging step.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import torch

from gcd_trl import dist, files
from gcd_trl.envs.tasks import task_type_name


def log_round(
    m: dict[str, list], acc: Any, rollout: Any, samples: list, rnd: Any, t_round: float
) -> dict[str, float]:
    """The round's rollout, advantage, batching and time metrics; returns its totals over processes
    (episodes, wins, steps, invalid, samples, tokens) for `RunSummary.tally`."""
    eps = rollout.episodes
    adv = [s.advantage for s in samples]
    stats = torch.tensor(
        [
            len(eps),
            sum(e.won for e in eps),
            sum(e.length for e in eps),
            sum(e.score for e in eps),
            sum(e.aborted for e in eps),
            len(samples),
            sum(not s.record.valid for s in samples),
            sum(s.record.valid and s.record.admissible is False for s in samples),
            sum(s.repeated for s in samples),
            sum(s.truncated for s in samples),
            sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples),
            sum(len(s.completion_ids) for s in samples),
            sum(u.padded_tokens for u in rnd.updates),
            rollout.pool_restarts,
            sum(adv),
            sum(a * a for a in adv),
        ],
        dtype=torch.float64,
        device=acc.device,
    )
    ext = torch.tensor(
        [-min(adv, default=math.inf), max(adv, default=-math.inf)], dtype=torch.float64, device=acc.device
    )
    stats, ext = dist.reduce(acc, stats, "sum"), dist.reduce(acc, ext, "max")
    keys = ("episodes", "wins", "steps", "score", "aborted", "samples", "invalid", "inadmissible", "repeated")
    keys += ("truncated", "tokens", "completion_tokens", "padded", "restarts", "adv_sum", "adv_sq")
    t = dict(zip(keys, stats.tolist()))
    n_ep, n = t["episodes"], t["samples"]
    m["rollout/episodes"].append(n_ep)
    m["rollout/success_rate"].append(t["wins"] / max(n_ep, 1))
    m["rollout/episode_length"].append(t["steps"] / max(n_ep, 1))
    m["rollout/score"].append(t["score"] / max(n_ep, 1))
    m["rollout/aborted_episodes"].append(t["aborted"])
    m["rollout/pool_restarts"].append(t["restarts"])
    m["rollout/samples"].append(n)
    m["rollout/invalid_rate"].append(t["invalid"] / max(n, 1))
    m["rollout/inadmissible_rate"].append(t["inadmissible"] / max(n, 1))  # well-formed, not on the list
    m["rollout/repeated_action_rate"].append(t["repeated"] / max(n, 1))
    m["rollout/truncated_rate"].append(t["truncated"] / max(n, 1))
    m["rollout/tokens"].append(t["tokens"])
    m["rollout/completion_tokens"].append(t["completion_tokens"])
    m["batching/microbatches"].append(sum(len(u.microbatches) for u in rnd.updates))
    m["batching/padding_fraction"].append(1.0 - t["tokens"] / t["padded"] if t["padded"] else 0.0)
    mean = t["adv_sum"] / max(n, 1)
    m["advantages/mean"].append(mean)
    m["advantages/std"].append(math.sqrt(max(t["adv_sq"] / max(n, 1) - mean * mean, 0.0)))
    neg_lo, hi = ext.tolist()
    m["advantages/min"].append(-neg_lo if n else 0.0)
    m["advantages/max"].append(hi if n else 0.0)
    m["time/generation"].append(rollout.time_generation)
    m["time/env"].append(rollout.time_env)
    m["time/logps"].append(rnd.time_logps)
    m["time/round_build"].append(t_round)
    return t


class RunSummary:
    """`rollout/success_rate/<task type>` each round (all processes), and the run's running totals for
    `summary.json`. The type keys come from the full task list, the same on every process."""

    def __init__(self, tasks: list) -> None:
        self.type_of = {t.key: task_type_name(t) for t in tasks}
        self.type_keys = sorted(set(self.type_of.values()))
        self.totals: dict[str, Any] = {
            "rounds": 0,
            "episodes": 0.0,
            "wins": 0.0,
            "steps": 0.0,
            "invalid": 0.0,
        }
        self.totals.update(samples=0.0, by_type={k: [0.0, 0.0] for k in self.type_keys})
        self.round_success: list[float] = []

    def tally(self, m: dict[str, list], acc: Any, episodes: list, t: dict[str, float]) -> None:
        """Add a round (`episodes`: this process's, `t`: `log_round`'s totals over processes)."""
        counts = torch.zeros(2 * len(self.type_keys), dtype=torch.float64, device=acc.device)
        slot = {k: i for i, k in enumerate(self.type_keys)}
        for e in episodes:
            i = slot.get(self.type_of.get(e.task, ""))
            if i is not None:
                counts[2 * i] += 1
                counts[2 * i + 1] += float(e.won)
        counts = dist.reduce(acc, counts, "sum")
        totals = self.totals
        for key, (n, won) in zip(self.type_keys, counts.view(-1, 2).tolist()):
            if n:
                m[f"rollout/success_rate/{key}"].append(won / n)
                totals["by_type"][key][0] += n
                totals["by_type"][key][1] += won
        totals["rounds"] += 1
        totals["episodes"] += t["episodes"]
        totals["wins"] += t["wins"]
        totals["steps"] += t["steps"]
        totals["invalid"] += t["invalid"]
        totals["samples"] += t["samples"]
        self.round_success.append(t["wins"] / max(t["episodes"], 1))

    def write(self, args: Any, env_args: Any, gcd_args: Any, num_tasks: int, global_step: int, output=None):
        """What the run did, in numbers: success overall, in the first and last rounds and per task type,
        invalid rate, episode length, optimizer steps, runtime. Written to `output_dir/summary.json` and
        printed as a short table; None when no round was played this session."""
        totals = self.totals
        if not totals["rounds"]:
            return None
        episodes = max(totals["episodes"], 1)
        summary = {
            "estimator": args.advantage_estimator,
            "environment": env_args.environment,
            "split": f"{env_args.split} ({env_args.part})",
            "tasks": num_tasks,
            "gcd": bool(gcd_args is not None and gcd_args.gcd),
            "rounds_this_session": totals["rounds"],
            "optimizer_steps": global_step,
            "episodes": int(totals["episodes"]),
            "success_rate": totals["wins"] / episodes,
            "success_rate_first_round": self.round_success[0],
            "success_rate_last_round": self.round_success[-1],
            "success_rate_by_task_type": {
                k: {"episodes": int(n), "success_rate": w / n} for k, (n, w) in totals["by_type"].items() if n
            },
            "mean_episode_length": totals["steps"] / episodes,
            "invalid_rate": totals["invalid"] / max(totals["samples"], 1),
            "train_runtime_s": round(
                float((output.metrics if output is not None else {}).get("train_runtime", 0)), 1
            ),
            "train_loss": None if output is None else output.training_loss,
            "output_dir": args.output_dir,
        }
        path = os.path.join(args.output_dir, "summary.json")
        files.write_json_atomic(path, summary)
        lines = [
            f"gcd-trl: run summary ({path})",
            f"  {summary['estimator']} on {env_args.environment} {summary['split']}: "
            f"{summary['rounds_this_session']} rounds, {summary['optimizer_steps']} optimizer steps, "
            f"{summary['episodes']} episodes",
            f"  success rate {summary['success_rate']:.3f} "
            f"(first round {summary['success_rate_first_round']:.3f}, "
            f"last round {summary['success_rate_last_round']:.3f}); "
            f"invalid rate {summary['invalid_rate']:.3f}; "
            f"mean episode length {summary['mean_episode_length']:.1f}",
        ]
        for key, v in summary["success_rate_by_task_type"].items():
            lines.append(f"    {key:<34} {v['success_rate']:.3f}  ({v['episodes']} episodes)")
        print("\n".join(lines), flush=True)
        return summary


def log_completions(logs: dict[str, Any], acc: Any, samples: list, k: int, seed: str) -> None:
    """TRL's completions table (console, wandb/trackio, output_dir/completions/*.parquet) for agent steps: a
    sample of `k` of each process's steps drawn from `seed`, gathered from all processes."""
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(samples)), min(k, len(samples))))
    won = {(s.record.group, s.record.traj) for s in samples if s.record.won}
    rows = [
        (
            s.record.prompt,
            s.record.completion,
            float(s.record.env_reward),
            float((s.record.group, s.record.traj) in won),
            s.advantage,
            "valid" if s.record.valid else f"invalid: {s.record.reason}",
            s.record.action or "",
        )
        for s in (samples[i] for i in picked)
    ]
    for prompt, completion, env_reward, episode_won, advantage, validity, action in dist.gather_objects(
        acc, rows
    ):
        logs["prompt"].append(prompt)
        logs["completion"].append(completion)
        logs["rewards"]["env_reward"].append(env_reward)
        logs["rewards"]["episode_won"].append(episode_won)
        logs["advantages"].append(advantage)
        logs["extra"]["validity"].append(validity)
        logs["extra"]["action"].append(action)


def sampling_gap(mb: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """|trainer - vLLM| log-prob per real completion token, and the IS ratio of those tokens."""
    keep = mb["completion_mask"].bool() & ~torch.isnan(mb["sampling_per_token_logps"])
    gap = (mb["old_per_token_logps"] - mb["sampling_per_token_logps"]).abs()[keep]
    ratio = mb.get("importance_sampling_ratio")
    ratio = torch.ones_like(gap) if ratio is None else ratio.expand_as(keep)[keep]
    return gap.float(), ratio.float()


def log_sampling_gap(m: dict[str, list], gaps: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Round-level gap between the trainer's and vLLM's log-probs (TRL's metric names). It stays near zero
    only while vLLM holds the trainer's current weights: the check that weight sync works."""
    gap = torch.cat([g for g, _ in gaps])
    ratio = torch.cat([r for _, r in gaps])
    if gap.numel() == 0:
        return
    stats = torch.stack([gap.mean(), gap.max(), ratio.min(), ratio.mean(), ratio.max()]).tolist()
    names = ("sampling_logp_difference/mean", "sampling_logp_difference/max")
    names += ("importance_sampling_ratio/min", "importance_sampling_ratio/mean")
    names += ("importance_sampling_ratio/max",)
    for name, value in zip(names, stats):
        m[f"sampling/{name}"].append(value)
