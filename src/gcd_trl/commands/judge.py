"""`gcd-trl judge label`: label step records (rules, and an external OpenAI-compatible judge).

    gcd-trl judge label --input outputs/run/rollouts --output labelled.jsonl \\
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-72B-Instruct --votes 3 --min-agree 2

Reads step records (rollout step files, an eval `episodes.jsonl`, or a directory of them), writes one
step record per line with `label` (0, 1 or null), `label_source` (rule, external, none) and, where the
external judge answered, `critiques`; prints a JSON summary as its last line:
{"steps", "good", "bad", "unlabelled", "requests", "cache_hits", "failures": {kind: count}, ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gcd-trl" / "judge_cache"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="GCD judge tools: label step records.")
    jsub = p.add_subparsers(dest="judge_command", required=True, metavar="ACTION")
    lab = jsub.add_parser(
        "label",
        help="Add label / label_source / critiques to step records (rules; external judge if configured).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lab.add_argument("--input", required=True, nargs="+", help="Step-record JSONL files or directories.")
    lab.add_argument("--output", required=True, help="Where to write the labelled step records (JSONL).")
    lab.add_argument("--config", help="A run config (YAML): its judge_* / GCD keys are used.")
    lab.add_argument(
        "--judge_base_url",
        "--base-url",
        dest="base_url",
        help="External judge endpoint (OpenAI-compatible), e.g. http://host:8000/v1",
    )
    lab.add_argument("--judge_model", "--model", dest="model", help="External judge model name.")
    lab.add_argument(
        "--judge_labels",
        "--labels",
        dest="labels",
        choices=("rules", "external", "both"),
        help="Label source (default: both).",
    )
    lab.add_argument(
        "--judge_votes", "--votes", dest="votes", type=int, help="Answers per step (judge_votes)."
    )
    lab.add_argument(
        "--judge_min_agree",
        "--min-agree",
        dest="min_agree",
        type=int,
        help="Answers that must agree to keep a label (judge_min_agree).",
    )
    lab.add_argument(
        "--judge_vote_mode",
        "--vote-mode",
        dest="vote_mode",
        choices=("n", "repeat"),
        help="One request with n, or one per answer.",
    )
    lab.add_argument(
        "--judge_api_key_env",
        "--api-key-env",
        dest="api_key_env",
        help="Env var holding the API key (judge_api_key_env).",
    )
    lab.add_argument(
        "--judge_temperature",
        "--temperature",
        dest="temperature",
        type=float,
        help="Sampling temperature (judge_temperature).",
    )
    lab.add_argument(
        "--judge_max_tokens",
        "--max-tokens",
        dest="max_tokens",
        type=int,
        help="Token cap of one answer (judge_max_tokens).",
    )
    lab.add_argument(
        "--judge_timeout",
        "--timeout",
        dest="timeout",
        type=float,
        help="Seconds per request (judge_timeout).",
    )
    lab.add_argument(
        "--judge_max_retries",
        "--max-retries",
        dest="max_retries",
        type=int,
        help="Client retries on 429/5xx/timeouts (judge_max_retries).",
    )
    lab.add_argument(
        "--judge_concurrency",
        "--concurrency",
        dest="concurrency",
        type=int,
        help="Requests in flight (judge_concurrency).",
    )
    lab.add_argument(
        "--judge_max_requests",
        "--max-requests",
        dest="max_requests",
        type=int,
        help="HTTP request budget (judge_max_requests).",
    )
    lab.add_argument(
        "--judge_token_budget",
        "--token-budget",
        dest="token_budget",
        type=int,
        help="Token budget (judge_token_budget).",
    )
    lab.add_argument(
        "--judge_template",
        "--template",
        dest="template",
        help="Critic template: built-in name or file (judge_template).",
    )
    lab.add_argument(
        "--judge_cache_dir",
        "--cache-dir",
        dest="cache_dir",
        help=f"Answer cache (judge_cache_dir). Default: {default_cache_dir()} (shared by runs).",
    )
    lab.add_argument("--quiet", action="store_true", help="No progress bar (it goes to stderr).")
    lab.set_defaults(func=run_label)


_FLAG_TO_FIELD = {
    "base_url": "judge_base_url",
    "model": "judge_model",
    "labels": "judge_labels",
    "votes": "judge_votes",
    "min_agree": "judge_min_agree",
    "vote_mode": "judge_vote_mode",
    "api_key_env": "judge_api_key_env",
    "temperature": "judge_temperature",
    "max_tokens": "judge_max_tokens",
    "timeout": "judge_timeout",
    "max_retries": "judge_max_retries",
    "concurrency": "judge_concurrency",
    "max_requests": "judge_max_requests",
    "token_budget": "judge_token_budget",
    "template": "judge_template",
    "cache_dir": "judge_cache_dir",
}


def judge_settings(args: argparse.Namespace):
    """GCDArguments from the config file's GCD keys, then the command-line flags (gcd itself is ignored:
    labelling does not train)."""
    from gcd_trl.config import check_yaml
    from gcd_trl.gcd.args import GCDArguments
    from gcd_trl.trainers.grpo_config import RL_DATACLASSES

    fields = {f.name for f in dataclasses.fields(GCDArguments)} - {"gcd"}
    values = {}
    if args.config:
        values = {k: v for k, v in check_yaml(args.config, RL_DATACLASSES).items() if k in fields}
    for flag, name in _FLAG_TO_FIELD.items():
        if getattr(args, flag) is not None:
            values[name] = getattr(args, flag)
    if values.get("judge_model") and "judge_labels" not in values:
        values["judge_labels"] = "both"
    return GCDArguments(**values)


def run_label(args: argparse.Namespace) -> int:
    import logging

    from gcd_trl.config import ConfigError
    from gcd_trl.prompts import TemplateError, load_template
    from gcd_trl.rollout.records import RecordFileError, read_steps, write_jsonl_atomic

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = judge_settings(args)
        template = load_template(settings.judge_template, kind="critic")
        if Path(args.output).resolve() in {Path(i).resolve() for i in args.input}:
            raise ConfigError(f"--output {args.output} is also an --input; write to another file")
        records = read_steps(args.input)
    except (ConfigError, TemplateError, RecordFileError, ValueError) as err:
        print(f"judge label: {err}", file=sys.stderr)
        return 2

    from gcd_trl.gcd.external import label_with_judge

    labelled, summary = label_with_judge(
        records, settings, template, settings.judge_cache_dir or default_cache_dir(), progress=not args.quiet
    )
    write_jsonl_atomic(args.output, labelled)
    summary["output"] = str(args.output)
    print(json.dumps(summary))
    return 0
