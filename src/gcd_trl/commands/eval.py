"""`gcd-trl eval`: evaluate a policy on a benchmark split, and merge eval directories into one table.

    gcd-trl eval --config configs/eval/alfworld_expert.yaml [--split L2 --output_dir DIR ...]
    accelerate launch --config_file configs/accelerate/X.yaml -m gcd_trl eval --config FILE
    gcd-trl eval --config FILE --accelerate_config multi_gpu --num_processes 4     # the same, relaunched
    gcd-trl eval report DIR [DIR ...] [--paper configs/eval/paper_table1.yaml] --out table.md

Everything that can be checked without a model or an env is checked first (config keys and types, the
policy's inputs, the model path, the split and its data directory, the golden-rules file, and that the
output directory holds either nothing or this same evaluation), so a bad input fails in seconds with a
message naming it. Rerunning the same command resumes an interrupted evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DESCRIPTION = (
    "Evaluate a policy (model, OpenAI-compatible endpoint, expert, random) on every task of a benchmark split. "
    "Every field below can be set in the --config YAML file or as --key value (the command line wins). "
    "`gcd-trl eval report DIR [DIR ...] [--paper FILE] --out FILE(.md|.json)` merges eval directories into "
    "one Table 1."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gcd_trl.commands._common import add_trl_command

    p = add_trl_command(
        sub,
        "eval",
        help="Evaluate a policy (model, OpenAI-compatible endpoint, expert, random) on a benchmark split.",
        description=DESCRIPTION,
        config_help="Eval config (YAML), e.g. configs/eval/alfworld_expert.yaml.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from gcd_trl.commands._common import lazy, trl_prelude
    from gcd_trl.dist import print_once

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if rest and rest[0] == "report":
        return run_report(rest[1:] + (["-h"] if args.help else []))
    argv = trl_prelude(args, rest, "eval", lazy("gcd_trl.eval.config", "EVAL_DATACLASSES"), DESCRIPTION)
    if isinstance(argv, int):  # -h, or the launched processes' exit code
        return argv
    from gcd_trl.config import ConfigError
    from gcd_trl.eval.setup import prepare
    from gcd_trl.eval.setup import run as evaluate

    try:
        parts = prepare(argv)
    except ConfigError as err:
        print_once(f"gcd-trl eval: {err}")  # every rank finds the same problem: say it once
        return 2
    ev = parts[0]
    try:
        report = evaluate(*parts)
    except KeyboardInterrupt:
        print_once(
            f"\ngcd-trl eval: interrupted; finished episodes are in {ev.output_dir}: rerun the same command "
            "to resume"
        )
        return 130
    status = (
        "" if report.get("complete") else f" (incomplete: {report['episodes']}/{report['expected_episodes']})"
    )
    print_once(
        f"{report['label']} on {report['environment']} {report['split']}: success {report['success']}/"
        f"{report['episodes']} = {100 * report['success_rate']:.1f}%, mean steps {report['mean_steps']:.1f}, "
        f"invalid {100 * report['invalid_rate']:.1f}%{status}; report in {Path(ev.output_dir) / 'report.md'}"
    )
    return 0


def run_report(argv: list[str]) -> int:
    from gcd_trl.eval.report import ReportError, merge_reports

    p = argparse.ArgumentParser(
        prog="gcd-trl eval report", description="Merge eval directories into one Table 1 (rows by label)."
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="Eval directories (each holds report.json).")
    p.add_argument("--paper", help="Published numbers to show beside them (YAML/JSON, see configs/eval/).")
    p.add_argument("--out", required=True, help="Output file: .md (Markdown) or .json.")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix not in (".md", ".json"):
        print(f"gcd-trl eval report: --out {out}: use a .md or .json file name", file=sys.stderr)
        return 2
    try:
        merged = merge_reports(args.dirs, paper=args.paper)
    except ReportError as err:
        print(f"gcd-trl eval report: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps({k: v for k, v in merged.items() if k != "markdown"}, indent=2) + "\n")
    else:
        out.write_text(merged["markdown"])
    print(merged["markdown"])
    return 0
