"""`gcd-trl config check FILE`: validate a run config and print the values the run will use.

The checks are `gcd-trl rl`'s before a model loads (`trainers.run.check_before_model`: keys and types,
report_to packages, the prompt template, the model path, precision, the checkpoint to resume), all but
listing the tasks, which may generate games: a check writes nothing.

After the resolved values comes a `fidelity` block: the settings that decide whether a run reproduces the
reference baselines (verl-agent's and RLVMR's scripts), each resolved (defaults and template defaults
filled in), and `differs_from_reference` listing every one that departs from the references (see
docs/fidelity.md for the reasons).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="Validate run configs.")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = csub.add_parser(
        "check",
        help="Validate FILE and print the resolved values.",
        description="Validate a run config (unknown keys, types, combinations, report_to packages, the "
        "template, the model path, the checkpoint to resume: the checks `gcd-trl rl` makes before loading "
        "anything, all but listing the tasks) and print the values the run will use, then its `fidelity` block.",
    )
    check.add_argument("file", help="A run config (YAML), e.g. configs/rl/tiny_alfworld_grpo.yaml")
    check.add_argument(
        "--all", action="store_true", help="Print every trainer field, not just the main ones."
    )
    check.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="--key value overrides, as for `gcd-trl rl`."
    )
    check.set_defaults(func=run_check)


def read_config_file(path: str) -> dict[str, Any]:
    """The YAML mapping in `path`, read before anything heavy is imported (a missing or broken file is
    reported in well under a second; the dataclass checks need TRL, and so torch)."""
    import yaml

    from gcd_trl.commands._common import CommandError

    file = Path(path)
    if not file.is_file():
        raise CommandError(
            f"config file not found: {path}" + (" (it is a directory)" if file.is_dir() else "")
        )
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CommandError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise CommandError(f"{path}: must hold a mapping of key: value, not {type(data).__name__}")
    return data or {}


def run_check(args: argparse.Namespace) -> int:
    import yaml

    from gcd_trl.commands._common import CommandError

    try:
        read_config_file(args.file)
    except CommandError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from gcd_trl.config import ConfigError, check_yaml
    from gcd_trl.trainers.fidelity import fidelity_summary
    from gcd_trl.trainers.grpo_config import RL_DATACLASSES, parse_rl_config, resolved_dict
    from gcd_trl.trainers.run import check_before_model

    overrides = list(args.overrides)
    note = ""
    if not _has_gpu():
        # GPU recipes still get every other check on a laptop.
        overrides += ["--bf16", "false", "--use_vllm", "false"]
        note = " (no GPU here: checked with bf16=false, use_vllm=false)"
    try:
        explicit = set(check_yaml(args.file, RL_DATACLASSES))
        parts = parse_rl_config(["--config", args.file, *overrides])
        with contextlib.redirect_stdout(sys.stderr):  # the resume notes; stdout is the YAML
            check_before_model(parts[0], parts[1], parts[3])
        fidelity = fidelity_summary(parts[0], parts[1])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(f"# {args.file}: OK{note}")
    print(yaml.safe_dump(resolved_dict(*parts, full=args.all, explicit=explicit), sort_keys=False), end="")
    print(yaml.safe_dump({"fidelity": fidelity}, sort_keys=False, width=110), end="")
    return 0


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
