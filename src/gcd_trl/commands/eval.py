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
import dataclasses
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


def _eval_dataclasses() -> tuple:
    from gcd_trl.eval.config import EVAL_DATACLASSES

    return EVAL_DATACLASSES


def _world() -> tuple[int, int]:
    """This process's (rank, world size) under accelerate / torchrun (no process group is needed)."""
    from gcd_trl.commands._common import process_rank, world_size

    return process_rank(), world_size()


def prepare(argv: list[str]):
    """Parse and check everything that needs no model. Returns (eval_args, env_args, tasks, identity),
    with env_args.suggestions holding the golden rules when a rules file is given."""
    from gcd_trl.commands.rl import InputError, _check_model_path, build_tasks
    from gcd_trl.config import ConfigError
    from gcd_trl.eval.config import parse_eval_config
    from gcd_trl.eval.runner import EvalError, check_output_dir, eval_identity, model_fingerprint
    from gcd_trl.prompts import TemplateError, default_agent_template, load_template

    try:
        ev, env = parse_eval_config(argv)
    except ConfigError as err:
        raise InputError(str(err)) from err
    try:
        load_template(
            env.prompt_template or default_agent_template(env.environment, bool(env.meta_reasoning)), "agent"
        )
    except TemplateError as err:
        raise InputError(f"prompt_template: {err}") from err
    if ev.golden_rules:
        from gcd_trl.eval.runner import _golden_rules

        try:
            rules = _golden_rules(ev.golden_rules)
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise InputError(f"golden_rules {ev.golden_rules}: {err}") from err
        env = dataclasses.replace(env, suggestions=rules)
    if ev.policy == "model":
        _check_model_path(ev.model_name_or_path)
    rank, world = _world()
    if world > 1 and ev.policy == "model" and ev.backend == "vllm":
        raise InputError(
            "backend=vllm runs in one process: launch without accelerate and use vllm_tensor_parallel_size"
        )
    tasks = build_tasks(env)
    extra: dict = {}
    if ev.policy in ("model", "openai"):
        extra.update(
            model=ev.model_name_or_path,
            max_new_tokens=ev.max_new_tokens,
            temperature=ev.temperature,
            top_p=ev.top_p,
            top_k=ev.top_k,
            seed=ev.seed,
        )
    if ev.policy == "model":
        extra.update(backend=ev.backend, model_fingerprint=model_fingerprint(ev.model_name_or_path))
    if ev.policy == "random":
        extra["seed"] = ev.seed
    identity = eval_identity(
        env,
        tasks,
        policy=ev.policy,
        num_samples=ev.num_samples,
        meta_reasoning=env.meta_reasoning,
        extra=extra,
    )
    try:
        check_output_dir(ev.output_dir, identity)
    except EvalError as err:
        raise InputError(f"output_dir: {err}") from err
    return ev, env, tasks, extra


def evaluate_config(ev, env, tasks, extra) -> dict:
    """Load the policy and evaluate (the part of `gcd-trl eval` after `prepare`)."""
    from gcd_trl.eval.policies import build_policy
    from gcd_trl.eval.runner import evaluate

    rank, world = _world()
    if ev.policy == "model" and ev.backend == "hf":
        import torch

        if not torch.cuda.is_available() or (ev.device or "").startswith("cpu"):
            # the env workers need CPU too: oversubscribed torch threads made generation ~7x slower on 2 cores
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        elif world > 1 and ev.device is None:
            ev = dataclasses.replace(ev, device=f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    policy = build_policy(ev, meta_reasoning=bool(env.meta_reasoning))
    return evaluate(
        policy,
        tasks,
        env,
        ev.output_dir,
        num_samples=ev.num_samples,
        meta_reasoning=bool(env.meta_reasoning),
        label=ev.row_label,
        identity=extra,
        progress=ev.progress and rank == 0,
        shard=(rank, world),
    )


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from gcd_trl.commands._common import print_once, trl_prelude
    from gcd_trl.commands.rl import InputError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if rest and rest[0] == "report":
        return run_report(rest[1:] + (["-h"] if args.help else []))
    argv = trl_prelude(args, rest, "eval", _eval_dataclasses, DESCRIPTION)
    if isinstance(argv, int):  # -h, or the launched processes' exit code
        return argv
    try:
        parts = prepare(argv)
    except InputError as err:
        print_once(f"gcd-trl eval: {err}")  # every rank finds the same problem: say it once
        return 2
    ev = parts[0]
    try:
        report = evaluate_config(*parts)
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
