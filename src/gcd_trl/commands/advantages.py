"""`gcd-trl advantages`: compute GRPO / GiGPO / RLVMR advantages for a JSONL file of step records.

The flags are the run config's keys (`--advantage_estimator`, `--gamma`, `--step_adv_norm`, ...) with the
run's defaults, so a rollout file from `gcd-trl rl` is re-scored to the advantages it holds; an eval
`episodes.jsonl` is read alike (`advantages.score.read_records`). Settings and
results must be finite numbers; the output is written atomically (a kill never leaves half a file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gcd_trl.commands._common import CommandError, add_alias, add_command, check_output_file, finite_float


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "y", "1", "t"):
        return True
    if value in ("false", "no", "n", "0", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gcd_trl.advantages.common import GRPO_FAMILY, GRPO_LEVELS, NORMS, STEP_REWARDS, AdvantageConfig

    d = AdvantageConfig()  # the defaults: the run config's and the references'
    p = add_command(
        sub,
        "advantages",
        help="Add advantages to step records (JSONL in, JSONL out).",
        description="Read one JSON object per step (group, traj, step, episode_reward or won, invalid or "
        "valid; gigpo: anchor, and step_reward or env_reward with --gigpo_step_reward dense; rlvmr: tag, "
        "raw_action or action, optionally admissible) and write the same records with `advantage`, "
        "`episode_advantage` and `step_advantage` added. Flags are the run config's keys with its "
        "defaults (the references'), so a rollout file from `gcd-trl rl` is re-scored to the advantages "
        "it holds. An eval episodes.jsonl is read alike: each episode's trajectory, grouped by task (its "
        "steps are written, one a line).",
    )
    p.add_argument(
        "--advantage_estimator",
        choices=GRPO_FAMILY,
        default=None,
        help="The estimator (required; the run config key advantage_estimator).",
    )
    add_alias(p, "--estimator", dest="advantage_estimator", choices=GRPO_FAMILY)
    p.add_argument("--input", required=True, help="JSONL file of step records ('-' for stdin).")
    p.add_argument(
        "--output",
        default="-",
        help="Where to write the JSONL ('-': stdout); its folder is created, the file written atomically.",
    )
    p.add_argument("--gamma", type=finite_float, default=d.gamma, help="Discount of GiGPO step returns.")
    p.add_argument("--omega", type=finite_float, default=d.omega, help="Weight of the step-level advantage.")
    p.add_argument(
        "--step_adv_norm",
        choices=NORMS,
        default=d.norm,
        help="(x-mean)/(std+1e-6) with the unbiased std, or x-mean.",
    )
    add_alias(p, "--norm", dest="step_adv_norm", choices=NORMS)
    p.add_argument(
        "--invalid_penalty",
        type=finite_float,
        default=d.invalid_penalty,
        help="Subtracted from an invalid step's scores.",
    )
    add_alias(p, "--invalid-penalty", dest="invalid_penalty", type=finite_float)
    p.add_argument(
        "--similarity_threshold",
        type=finite_float,
        default=d.similarity_threshold,
        help="GiGPO: group anchors at least this similar (difflib ratio); None: identical only.",
    )
    add_alias(p, "--similarity-threshold", dest="similarity_threshold", type=finite_float)
    p.add_argument(
        "--success_reward",
        type=finite_float,
        default=d.success_reward,
        help="Episode reward of a won trajectory, for records with `won` but no episode_reward "
        "(verl-agent and RLVMR: 10).",
    )
    add_alias(p, "--success-reward", dest="success_reward", type=finite_float)
    p.add_argument(
        "--gigpo_step_reward",
        choices=STEP_REWARDS,
        default=d.step_reward,
        help="GiGPO step rewards for records without step_reward: the success reward on the last step "
        "(the references) or success_reward x env_reward (dense ScienceWorld score deltas).",
    )
    add_alias(p, "--step-reward", dest="gigpo_step_reward", choices=STEP_REWARDS)
    p.add_argument(
        "--reflection_at_first_step",
        type=_bool,
        nargs="?",
        const=True,
        default=d.reflection_at_first_step,
        metavar="BOOL",
        help="RLVMR: pay <reflection> at a trajectory's first step (RLVMR's code does).",
    )
    p.add_argument(
        "--no_reflection_at_first_step",
        dest="reflection_at_first_step",
        action="store_false",
        help="Same as --reflection_at_first_step false.",
    )
    add_alias(p, "--reflection-at-first-step", dest="reflection_at_first_step", action="store_true")
    add_alias(p, "--no-reflection-at-first-step", dest="reflection_at_first_step", action="store_false")
    p.add_argument(
        "--grpo_level",
        choices=GRPO_LEVELS,
        default=d.grpo_level,
        help="Episode statistics over step samples (verl-agent) or one value per trajectory.",
    )
    add_alias(p, "--grpo-level", dest="grpo_level", choices=GRPO_LEVELS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gcd_trl.advantages import AdvantageConfig
    from gcd_trl.advantages.score import read_records, score_records
    from gcd_trl.rollout.records import RecordFileError, write_jsonl_atomic

    name = "<stdin>" if args.input == "-" else args.input
    try:
        if args.output != "-":
            check_output_file(args.output)
        if args.input != "-" and Path(args.input).is_dir():
            raise ValueError(f"--input {args.input}: is a directory; give a JSONL file (or '-')")
        if args.advantage_estimator is None:
            raise ValueError("--advantage_estimator is required (grpo, gigpo or rlvmr)")
        config = AdvantageConfig.from_args(args)  # the same field names as the run config
        if args.input == "-":
            records, lines = read_records(sys.stdin, name)
        else:
            with open(args.input, encoding="utf-8") as f:
                records, lines = read_records(f, name)
        score_records(records, lines, name, config)
        if args.output == "-":
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
            sys.stdout.write(text)
        else:
            write_jsonl_atomic(args.output, records)
    except (OSError, ValueError, CommandError, RecordFileError) as err:
        message = str(err)
        if "Out of range float values" in message:
            message = "a record holds NaN or Infinity, which is not valid JSON; nothing was written"
        print(f"gcd-trl advantages: error: {message}", file=sys.stderr)
        return 2
    if args.output != "-":
        print(f"wrote {len(records)} records to {args.output}", file=sys.stderr)
    return 0
