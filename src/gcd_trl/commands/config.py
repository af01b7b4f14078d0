"""`gcd-trl config check FILE`: validate a run config and print the values the run will use."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="Validate run configs.")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = csub.add_parser("check", help="Validate FILE and print the resolved values.")
    check.add_argument("file", help="A run config (YAML), e.g. configs/rl/tiny_alfworld_grpo.yaml")
    check.add_argument(
        "--all", action="store_true", help="Print every trainer field, not just the main ones."
    )
    check.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="--key value overrides, as for `gcd-trl rl`."
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    import yaml

    from gcd_trl.config import ConfigError, check_yaml, parse_rl_config, resolved_dict

    overrides = list(args.overrides)
    note = ""
    if not _has_gpu():
        # GPU recipes still get every other check on a laptop.
        overrides += ["--bf16", "false", "--use_vllm", "false"]
        note = " (no GPU here: checked with bf16=false, use_vllm=false)"
    try:
        explicit = set(check_yaml(args.file))
        parts = parse_rl_config(["--config", args.file, *overrides])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(f"# {args.file}: OK{note}")
    print(yaml.safe_dump(resolved_dict(*parts, full=args.all, explicit=explicit), sort_keys=False), end="")
    return 0


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
