"""`gcd-trl advantages`: compute GRPO / GiGPO / RLVMR advantages for a JSONL file of step records."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "advantages",
        help="Add advantages to step records (JSONL in, JSONL out).",
        description="Read one JSON object per step (group, traj, step, episode_reward or won, invalid or "
        "valid; gigpo: anchor, and step_reward or env_reward with --step-reward dense; rlvmr: tag, "
        "raw_action or action, optionally admissible) and write the same records with `advantage`, "
        "`episode_advantage` and `step_advantage` added. The defaults are a training run's (the "
        "references'), so a rollout file from `gcd-trl rl` is re-scored to the advantages it holds.",
    )
    p.add_argument(
        "--estimator", dest="advantage_estimator", required=True, choices=("grpo", "gigpo", "rlvmr")
    )
    p.add_argument("--input", required=True, help="JSONL file of step records ('-' for stdin).")
    p.add_argument("--output", default="-", help="Where to write the JSONL (default: stdout).")
    p.add_argument("--gamma", type=float, default=0.95, help="Discount of GiGPO step returns.")
    p.add_argument("--omega", type=float, default=1.0, help="Weight of the step-level advantage.")
    p.add_argument(
        "--norm",
        dest="step_adv_norm",
        choices=("mean_std", "mean"),
        default="mean_std",
        help="(x-mean)/(std+1e-6) with the unbiased std, or x-mean.",
    )
    p.add_argument(
        "--invalid-penalty", type=float, default=0.1, help="Subtracted from an invalid step's scores."
    )
    p.add_argument(
        "--similarity-threshold",
        type=float,
        default=None,
        help="GiGPO: group anchors at least this similar (difflib ratio); default identical only.",
    )
    p.add_argument(
        "--success-reward",
        type=float,
        default=10.0,
        help="Episode reward of a won trajectory, for records with `won` but no episode_reward "
        "(verl-agent and RLVMR: 10).",
    )
    p.add_argument(
        "--step-reward",
        dest="gigpo_step_reward",
        choices=("success", "dense"),
        default="success",
        help="GiGPO step rewards for records without step_reward: the success reward on the last step "
        "(the references) or success_reward x env_reward (dense ScienceWorld score deltas).",
    )
    p.add_argument(
        "--reflection-at-first-step",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="RLVMR: pay <reflection> at a trajectory's first step (RLVMR's code does).",
    )
    p.add_argument(
        "--grpo-level",
        choices=("steps", "trajectories"),
        default="steps",
        help="Episode statistics over step samples (verl-agent) or one value per trajectory.",
    )
    p.set_defaults(func=run)


def _read_records(stream: TextIO, name: str) -> tuple[list[dict[str, Any]], list[int]]:
    records, lines = [], []
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{name}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
        lines.append(lineno)
    return records, lines


def run(args: argparse.Namespace) -> int:
    from gcd_trl.advantages import AdvantageConfig, RecordError, compute_advantage_terms, records_to_batch

    name = "<stdin>" if args.input == "-" else args.input
    try:
        config = AdvantageConfig.from_args(args)  # the same field names as the run config
        if args.input == "-":
            records, lines = _read_records(sys.stdin, name)
        else:
            with open(args.input, encoding="utf-8") as f:
                records, lines = _read_records(f, name)
        try:
            batch = records_to_batch(records, config=config)
            terms = compute_advantage_terms(batch, config)
        except RecordError as err:
            raise ValueError(f"{name}:{lines[err.index]}: {err.problem}") from None
    except (OSError, ValueError) as err:
        print(f"gcd-trl advantages: error: {err}", file=sys.stderr)
        return 2

    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for record, total, ep, step in zip(
            records, terms.total.tolist(), terms.episode.tolist(), terms.step.tolist()
        ):
            record.update(advantage=total, episode_advantage=ep, step_advantage=step)
            out.write(json.dumps(record) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output != "-":
        print(f"wrote {len(records)} records to {args.output}", file=sys.stderr)
    return 0
