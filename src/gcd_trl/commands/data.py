"""`gcd-trl data ...`: build the SFT datasets (data/README.md lists them all).

    gcd-trl data agent-sft --environment alfworld --games DIR --output_dir DIR
        [--prompt_template alfworld_compact] [--think short] [--recovery_episodes 1]
        [--workers 2] [--tokenizer MODEL_DIR]
    gcd-trl data agent-sft --environment scienceworld --split L0 --max_tasks 300 --output_dir DIR
    gcd-trl data agent-sft --rl_config configs/rl/tiny_alfworld_gigpo_sft.yaml --games DIR --output_dir DIR
    gcd-trl data judge-sft --steps DIR/steps --output_dir DIR [--good_share 0.5] [--critic_template critic]

Flags are named like the run config's keys (dashed spellings and `--out`, `--env`, `--limit`, `--template`
work too). Arguments are checked before any env starts. The agent data's prompts come from the RL prompt
settings (`--rl_config`, or --prompt_template / --history_length / --meta_reasoning / --suggestions).
Each builder shows progress on stderr and prints its JSON summary last on stdout (also saved as
OUTPUT_DIR/summary.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from gcd_trl.envs.base import ENV_NAMES
from gcd_trl.envs.splits import LEVELS

PERTURBATIONS = ("irrelevant", "repeat", "invalid", "premature_finish", "absent")


class ArgError(ValueError):
    """A bad command-line argument, reported before any work starts."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gcd_trl.commands._common import add_alias
    from gcd_trl.rollout.expert import expert_budgets

    p = sub.add_parser("data", help="Build agent and judge SFT datasets.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATASET")

    a = dsub.add_parser(
        "agent-sft",
        help="Expert (and recovery) episodes as chat conversations, one per step.",
        description="Play the expert (and a perturbed policy labelled by the expert) and write one chat "
        "conversation per step, prompts rendered exactly as RL renders them.",
    )
    a.add_argument(
        "--environment", choices=ENV_NAMES, default=None, help="alfworld (default) or scienceworld."
    )
    add_alias(a, "--env", dest="environment", choices=ENV_NAMES)
    src = a.add_mutually_exclusive_group()
    src.add_argument("--games", help="ALFWorld: a directory of games (searched recursively).")
    src.add_argument("--split", choices=LEVELS, help="A benchmark split level.")
    a.add_argument("--part", choices=("train", "test"), default="train", help="Part of --split.")
    a.add_argument("--data_dir", default=None, help="ALFWorld --split: the folder holding json_2.1.1.")
    add_alias(a, "--data-dir", dest="data_dir")
    a.add_argument("--task_types", type=int, nargs="+", default=None, metavar="T", help="ALFWorld types 1-6.")
    add_alias(a, "--task-types", dest="task_types", type=int, nargs="+")
    a.add_argument(
        "--scienceworld_tasks", nargs="+", default=None, metavar="NAME", help="ScienceWorld tasks."
    )
    add_alias(a, "--task-names", dest="scienceworld_tasks", nargs="+")
    a.add_argument("--max_tasks", type=int, default=None, help="At most N tasks (round-robin across types).")
    add_alias(a, "--limit", dest="max_tasks", type=int)
    a.add_argument("--rl_config", default=None, help="Take the prompt settings from this RL run config.")
    add_alias(a, "--rl-config", dest="rl_config")
    a.add_argument("--prompt_template", default=None, help="Agent prompt template (built-in name or file).")
    add_alias(a, "--template", dest="prompt_template")
    a.add_argument("--history_length", type=int, default=None, help="History pairs shown (-1: all).")
    add_alias(a, "--history-length", dest="history_length", type=int)
    a.add_argument("--meta_reasoning", action="store_true", default=None, help="RLVMR meta tags.")
    add_alias(a, "--meta-reasoning", dest="meta_reasoning", action="store_true")
    a.add_argument("--suggestions", default=None, help="Guidelines injected as {suggestions}.")
    a.add_argument(
        "--alfworld_expert", choices=("handcoded", "planner"), default=None, help="ALFWorld expert."
    )
    add_alias(a, "--alfworld-expert", dest="alfworld_expert", choices=("handcoded", "planner"))
    a.add_argument(
        "--think",
        choices=("template", "short", "endpoint"),
        default="template",
        help="Reasoning before the action: the paper-style template, a few words, or the endpoint's.",
    )
    a.add_argument("--recovery_episodes", type=int, default=1, help="Perturbed episodes per task (0: none).")
    add_alias(a, "--recovery-episodes", dest="recovery_episodes", type=int)
    a.add_argument("--perturb_prob", type=float, default=0.25, help="Chance a recovery step is a mistake.")
    add_alias(a, "--perturb-prob", dest="perturb_prob", type=float)
    a.add_argument(
        "--perturbations",
        nargs="+",
        default=None,
        choices=PERTURBATIONS,
        help="Mistakes a recovery episode makes (default: all).",
    )
    a.add_argument(
        "--policy_episodes",
        nargs="+",
        default=None,
        metavar="FILE",
        help="DAgger: a policy's episodes (`gcd-trl eval`'s episodes.jsonl on these tasks); each is replayed "
        "and every state it reached becomes a row labelled with the expert's action.",
    )
    add_alias(a, "--policy-episodes", dest="policy_episodes", nargs="+")
    a.add_argument("--max_perturbations", type=int, default=4, help="Mistakes per recovery episode, at most.")
    add_alias(a, "--max-perturbations", dest="max_perturbations", type=int)
    a.add_argument("--expert_max_steps", type=int, default=None, help=f"Default: {expert_budgets()}.")
    add_alias(a, "--expert-max-steps", dest="expert_max_steps", type=int)
    a.add_argument("--keep_failed", action="store_true", help="Keep expert episodes the expert lost.")
    add_alias(a, "--keep-failed", dest="keep_failed", action="store_true")
    a.add_argument("--no_dedup", action="store_true", help="Keep identical (prompt, action) rows.")
    add_alias(a, "--no-dedup", dest="no_dedup", action="store_true")
    a.add_argument("--oversample_max", type=int, default=1, help="Max copies of rare-verb rows (1: off).")
    add_alias(a, "--oversample-max", dest="oversample_max", type=int)
    a.add_argument("--workers", type=int, default=1, help="Env worker processes.")
    _common(a, add_alias)
    a.set_defaults(func=run_agent)

    j = dsub.add_parser(
        "judge-sft",
        help="Critic prompts over labelled steps, with critiques.",
        description="Label step records (the paper's rules, else how they were made), render critic "
        "prompts and write critiques (template or endpoint), class-balanced.",
    )
    j.add_argument(
        "--steps", nargs="+", default=None, help="Step records: agent-sft's DIR/steps, rollouts, episodes."
    )
    j.add_argument("--critic_template", default="critic", help="critic, critic_compact, or a file.")
    add_alias(j, "--critic-template", dest="critic_template")
    j.add_argument(
        "--critique",
        choices=("template", "endpoint"),
        default="template",
        help="Who writes the critiques: a template, or the OpenAI-compatible endpoint.",
    )
    j.add_argument("--good_share", default="0.5", help="Share of good rows after balancing, or 'none'.")
    add_alias(j, "--good-share", dest="good_share")
    j.add_argument(
        "--label_priority",
        choices=("rule", "construction"),
        default="rule",
        help="Which label wins where both exist: the paper's rule (default) or how the step was made.",
    )
    add_alias(j, "--label-priority", dest="label_priority", choices=("rule", "construction"))
    j.add_argument("--max_rows", type=int, default=None, help="At most N rows (seeded sample).")
    add_alias(j, "--max-rows", dest="max_rows", type=int)
    j.add_argument("--endpoint_votes", type=int, default=3, help="Endpoint answers per step.")
    add_alias(j, "--endpoint-votes", dest="endpoint_votes", type=int)
    _common(j, add_alias)
    j.set_defaults(func=run_judge)


def _common(p: argparse.ArgumentParser, add_alias) -> None:
    p.add_argument("--output_dir", default=None, help="Output folder (train.jsonl, summary.json). Required.")
    add_alias(p, "--out", dest="output_dir")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="File format of the rows.")
    p.add_argument("--seed", type=int, default=0, help="Seed: the same seed builds the same rows.")
    p.add_argument("--tokenizer", default=None, help="Count tokens with this tokenizer (e.g. the model).")
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    p.add_argument("--endpoint_model", default=None, help="OpenAI-compatible model (think / critique).")
    p.add_argument("--endpoint_base_url", default=None, help="e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--endpoint_api_key_env", default="OPENAI_API_KEY", help="Env var holding the API key.")
    p.add_argument(
        "--endpoint_cache", default=None, help="Answer cache (default OUTPUT_DIR/.endpoint_cache)."
    )
    p.add_argument("--endpoint_max_requests", type=int, default=None, help="Request budget.")
    for flag in ("model", "base_url", "api_key_env", "cache", "max_requests"):
        add_alias(p, f"--endpoint-{flag.replace('_', '-')}", dest=f"endpoint_{flag}")


def _error(err: Exception) -> int:
    print(f"gcd-trl data: error: {err}", file=sys.stderr)
    return 2


def _check_out(args: argparse.Namespace) -> Path:
    if not args.output_dir:
        raise ArgError("--output_dir is required (the dataset folder to write)")
    path = Path(args.output_dir)
    if path.exists() and not path.is_dir():
        raise ArgError(f"--output_dir {path} exists and is not a directory")
    return path


def _endpoint(args: argparse.Namespace, needed: bool, votes: int = 1):
    if not needed:
        return None
    if not args.endpoint_model or not args.endpoint_base_url:
        raise ArgError("an endpoint is needed: give --endpoint_model and --endpoint_base_url")
    from gcd_trl.gcd.external import ExternalJudge

    return ExternalJudge(
        model=args.endpoint_model,
        base_url=args.endpoint_base_url,
        api_key_env=args.endpoint_api_key_env,
        votes=votes,
        min_agree=1,
        cache_dir=args.endpoint_cache or str(Path(args.output_dir) / ".endpoint_cache"),
        max_requests=args.endpoint_max_requests,
    )


def env_arguments(args: argparse.Namespace):
    """The RL prompt settings: an RL config's env section, with the options given here on top."""
    from gcd_trl.config import ConfigError
    from gcd_trl.rollout.settings import EnvArguments

    values: dict[str, Any] = {}
    if args.rl_config:
        from gcd_trl.trainers.grpo_config import parse_rl_config  # TRL, and so torch: only when needed

        try:
            _, env, _, _ = parse_rl_config(["--config", args.rl_config])
        except ConfigError as err:
            raise ArgError(f"--rl_config: {err}") from None
        values = {f.name: getattr(env, f.name) for f in dataclasses.fields(env)}
    given = {
        "environment": args.environment,
        "prompt_template": args.prompt_template,
        "history_length": args.history_length,
        "meta_reasoning": args.meta_reasoning,
        "suggestions": args.suggestions,
        "alfworld_expert": args.alfworld_expert,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    values.setdefault("environment", "alfworld")
    for key in (
        "generate_games",
        "data_dir",
        "split",
        "part",
        "max_tasks",
        "task_types",
        "scienceworld_tasks",
    ):
        values.pop(key, None)  # which tasks is this command's business
    try:
        return EnvArguments(**values).resolved()  # meta_reasoning: as given (or the RL config's), else off
    except ConfigError as err:
        raise ArgError(str(err)) from None


def _check_agent_paths(args: argparse.Namespace) -> None:
    """What needs no import: the task source and the folders exist (before an RL config is parsed)."""
    if not args.games and not args.split:
        raise ArgError("one of --games DIR or --split L0|L1|L2 is required")
    if args.games and not Path(args.games).is_dir():
        raise ArgError(f"--games {args.games}: no such directory")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise ArgError(f"--data_dir {args.data_dir}: no such directory")
    if args.rl_config and not Path(args.rl_config).is_file():
        raise ArgError(f"--rl_config {args.rl_config}: no such file")


def _check_agent_args(args: argparse.Namespace) -> None:
    for name in ("max_tasks", "expert_max_steps", "workers", "oversample_max"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ArgError(f"--{name} must be >= 1, got {value}")
    for name in ("recovery_episodes", "max_perturbations"):
        if getattr(args, name) < 0:
            raise ArgError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0.0 <= args.perturb_prob <= 1.0:
        raise ArgError(f"--perturb_prob must lie in [0, 1], got {args.perturb_prob}")
    if args.environment == "scienceworld" and (args.games or args.task_types):
        raise ArgError("--games / --task_types are for alfworld; use --split and --scienceworld_tasks")
    if args.environment == "alfworld" and args.scienceworld_tasks:
        raise ArgError("--scienceworld_tasks is for scienceworld; use --task_types for alfworld")
    bad = [t for t in args.task_types or () if t not in range(1, 7)]
    if bad:
        raise ArgError(f"--task_types must be in 1-6, got {bad[0]}")
    if args.think == "endpoint" and not (args.endpoint_model and args.endpoint_base_url):
        raise ArgError("--think endpoint needs an endpoint: give --endpoint_model and --endpoint_base_url")


def run_agent(args: argparse.Namespace) -> int:
    try:
        out = _check_out(args)
        _check_agent_paths(args)
        env_args = env_arguments(args)
        args.environment = env_args.environment
        _check_agent_args(args)
        from gcd_trl.commands._common import selected_tasks
        from gcd_trl.config import ConfigError
        from gcd_trl.data.agent import AgentSFTConfig

        try:
            env_args.load_template()
        except ConfigError as err:
            raise ArgError(f"--{err}") from None
        cfg = AgentSFTConfig(
            think=args.think,
            recovery_episodes=args.recovery_episodes,
            perturb_prob=args.perturb_prob,
            perturbations=tuple(args.perturbations) if args.perturbations else PERTURBATIONS,
            max_perturbations=args.max_perturbations,
            expert_max_steps=args.expert_max_steps,
            only_won=not args.keep_failed,
            dedup=not args.no_dedup,
            oversample_max=args.oversample_max,
            seed=args.seed,
            workers=args.workers,
        )
        tasks = selected_tasks(args)
        if args.policy_episodes:
            from gcd_trl.data.agent import read_policy_episodes

            cfg.policy_completions = read_policy_episodes(args.policy_episodes, [t.key for t in tasks])
        from gcd_trl.data.io import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        endpoint = _endpoint(args, args.think == "endpoint")
    except (ValueError, FileNotFoundError) as err:  # ArgError, ConfigError, a split/data problem
        return _error(err)
    from gcd_trl.data.agent import build_agent_sft
    from gcd_trl.data.io import write_dataset

    try:
        result = build_agent_sft(tasks, env_args, cfg, endpoint=endpoint, progress=not args.quiet)
    finally:
        if endpoint is not None:
            endpoint.close()
    if not result.rows:
        print(json.dumps(result.summary, indent=1))
        return _error(ValueError("no rows were built (see faults in the summary)"))
    extra = {"endpoint": endpoint.stats()} if endpoint is not None else {}
    summary = write_dataset(
        out,
        result.rows,
        result.summary,
        fmt=args.format,
        tokenizer=tokenizer,
        steps=result.steps,
        tasks=len(tasks),
        **extra,
    )
    print(json.dumps(summary, indent=1))
    return 0


def run_judge(args: argparse.Namespace) -> int:
    try:
        out = _check_out(args)
        if not args.steps:
            raise ArgError("--steps is required (step-record files or folders)")
        try:
            share = None if str(args.good_share).lower() == "none" else float(args.good_share)
        except ValueError:
            raise ArgError(
                f"--good_share must be a number in (0, 1) or 'none', got {args.good_share!r}"
            ) from None
        from gcd_trl.data.judge import JudgeSFTConfig
        from gcd_trl.prompts import TemplateError, load_template
        from gcd_trl.rollout.records import RecordFileError, read_steps

        try:
            load_template(args.critic_template, "critic")
        except TemplateError as err:
            raise ArgError(f"--critic_template: {err}") from None
        cfg = JudgeSFTConfig(
            critic_template=args.critic_template,
            critique=args.critique,
            good_share=share,
            label_priority=args.label_priority,
            max_rows=args.max_rows,
            seed=args.seed,
        )
        from gcd_trl.data.io import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        try:
            records = read_steps(args.steps, kind="agent")
        except RecordFileError as err:
            raise ArgError(f"--steps: {err}") from None
        if not records:
            raise ArgError(f"--steps {' '.join(args.steps)}: no agent step records")
        endpoint = _endpoint(args, args.critique == "endpoint", votes=args.endpoint_votes)
    except ValueError as err:  # ArgError, a bad JudgeSFTConfig value
        return _error(err)
    from gcd_trl.data.io import write_dataset
    from gcd_trl.data.judge import build_judge_sft

    try:
        result = build_judge_sft(records, cfg, endpoint=endpoint, progress=not args.quiet)
    finally:
        if endpoint is not None:
            endpoint.close()
    if not result.rows:
        print(json.dumps(result.summary, indent=1))
        return _error(ValueError("no labelled steps: nothing to write"))
    summary = write_dataset(out, result.rows, result.summary, fmt=args.format, tokenizer=tokenizer)
    print(json.dumps(summary, indent=1))
    return 0
