"""`gcd-trl env ...`: generate ALFWorld games, write expert demonstrations, replay the expert.

    gcd-trl env generate-alfworld --data_dir DIR --generate_games N [--generate_seed S] [--task_types 1 2 ...]
    gcd-trl env expert --environment alfworld --games DIR [--max_tasks N] --output FILE.jsonl
    gcd-trl env expert --environment scienceworld --split L0 [--part train|test] --output FILE.jsonl
    gcd-trl env replay --environment alfworld --games DIR [--max_tasks N]
    gcd-trl env replay --environment scienceworld --split L2 --part test [--max_tasks N]

Flags are the run config's keys (`--max_episode_steps`, `--history_length`, `--jvm_heap`, ...: the same
meaning everywhere; the old dashed spellings still work). Arguments and game files are checked before any
env starts. `--max_tasks N` takes tasks round-robin across task types (ALFWorld) or task names
(ScienceWorld), in split order, so a small limit still covers every type. Progress goes to stderr, the
JSON summary to stdout; the exit code is 1 when no episode ran cleanly.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from gcd_trl.commands._common import add_alias, add_command
from gcd_trl.envs.base import ENV_NAMES
from gcd_trl.envs.splits import LEVELS

JVM_HEAP = re.compile(r"^\d+[kmgKMG]$")  # as EnvArguments checks jvm_heap


class ArgError(ValueError):
    """A bad command-line argument, reported before any env starts."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from gcd_trl.rollout.expert import expert_budgets

    p = sub.add_parser("env", help="Generate ALFWorld games, write expert data, replay the expert.")
    esub = p.add_subparsers(dest="env_command", required=True, metavar="ACTION")

    gen = add_command(
        esub,
        "generate-alfworld",
        help="Write solvable ALFWorld games (json_2.1.1 layout).",
        description="Write planner-checked ALFWorld games, offline. A folder that already holds exactly "
        "these games is left as it is; one holding other games is refused unless --add.",
    )
    gen.add_argument("--data_dir", help="Output folder (the run config's data_dir). Required.")
    add_alias(gen, "--out", dest="data_dir")
    gen.add_argument("--generate_games", type=int, help="Number of games (the run config key). Required.")
    add_alias(gen, "--num", dest="generate_games", type=int)
    gen.add_argument("--generate_seed", type=int, default=0, help="Seed of the games.")
    add_alias(gen, "--seed", dest="generate_seed", type=int)
    gen.add_argument(
        "--grammar",
        choices=("dataset", "wheel"),
        default="dataset",
        help="Command wording: 'dataset' as ALFWorld's released games ('put X in/on Y'), "
        "'wheel' as alfworld 0.4.2's own grammar ('move X to Y').",
    )
    gen.add_argument(
        "--task_types",
        type=int,
        nargs="+",
        default=None,
        metavar="T",
        help="ALFWorld task types 1-6; None: all.",
    )
    add_alias(gen, "--task-types", dest="task_types", type=int, nargs="+")
    gen.add_argument(
        "--max_receptacles",
        type=int,
        default=None,
        metavar="K",
        help="Cut each room to K receptacles (>= 3; the task's are always kept, the rest drawn with the "
        "game's seed): short games for a curriculum. None: full rooms. The games record K.",
    )
    add_alias(gen, "--max-receptacles", dest="max_receptacles", type=int)
    gen.add_argument(
        "--add",
        action="store_true",
        help="Add these games to a folder that holds other games (without it: refused, naming what is there).",
    )
    gen.set_defaults(func=run_generate)

    for name, helptext in (
        ("expert", "Play the expert and write one JSONL record per step."),
        ("replay", "Play the expert and print a success summary."),
    ):
        q = add_command(esub, name, help=helptext, description=helptext)
        q.add_argument("--environment", choices=ENV_NAMES, help="The environment. Required.")
        add_alias(q, "--env", dest="environment", choices=ENV_NAMES)
        src = q.add_mutually_exclusive_group()
        src.add_argument("--games", help="ALFWorld: a directory of games (searched recursively).")
        src.add_argument("--split", choices=LEVELS, help="A benchmark split level.")
        q.add_argument("--part", choices=("train", "test"), default="train", help="Part of --split.")
        q.add_argument(
            "--data_dir",
            default=None,
            help="ALFWorld --split: the folder holding json_2.1.1; None: $ALFWORLD_DATA.",
        )
        add_alias(q, "--data-dir", dest="data_dir")
        q.add_argument(
            "--task_types",
            type=int,
            nargs="+",
            default=None,
            metavar="T",
            help="ALFWorld: only these task types (1-6).",
        )
        add_alias(q, "--task-types", dest="task_types", type=int, nargs="+")
        q.add_argument(
            "--scienceworld_tasks",
            nargs="+",
            default=None,
            metavar="NAME",
            help="ScienceWorld: only these task names (e.g. boil find-living-thing).",
        )
        add_alias(q, "--task-names", dest="scienceworld_tasks", nargs="+")
        q.add_argument(
            "--max_tasks", type=int, default=None, help="At most N tasks (round-robin across types)."
        )
        add_alias(q, "--limit", dest="max_tasks", type=int)
        q.add_argument(
            "--max_episode_steps",
            type=int,
            default=None,
            help=f"Env steps per episode; None: {expert_budgets()} (expert paths run longer than the RL "
            "limit).",
        )
        add_alias(q, "--max-steps", dest="max_episode_steps", type=int)
        q.add_argument("--history_length", type=int, default=2, help="History pairs shown in the prompt.")
        add_alias(q, "--history-length", dest="history_length", type=int)
        q.add_argument(
            "--meta_reasoning", action="store_true", help="RLVMR format (meta tags, *_rlvmr template)."
        )
        add_alias(q, "--meta-reasoning", dest="meta_reasoning", action="store_true")
        q.add_argument(
            "--prompt_template",
            default=None,
            help="Agent prompt template: a built-in name or a .txt file; None: the env's.",
        )
        add_alias(q, "--template", dest="prompt_template")
        q.add_argument(
            "--alfworld_expert",
            choices=("handcoded", "planner"),
            default="handcoded",
            help="ALFWorld expert: alfworld's handcoded one, or its PDDL planner.",
        )
        add_alias(q, "--alfworld-expert", dest="alfworld_expert", choices=("handcoded", "planner"))
        q.add_argument("--jvm_heap", default="512m", help="ScienceWorld: JVM heap cap (-Xmx), e.g. 512m, 2g.")
        add_alias(q, "--jvm-heap", dest="jvm_heap")
        q.add_argument(
            "--simplifications", default="easy", help="ScienceWorld simplification preset or list."
        )
        if name == "expert":
            q.add_argument("--output", help="Output JSONL file. Required.")
            add_alias(q, "--out", dest="output")
            q.add_argument("--only_won", action="store_true", help="Write only episodes the expert won.")
            add_alias(q, "--only-won", dest="only_won", action="store_true")
        q.set_defaults(func=run_expert if name == "expert" else run_replay)


def _error(err: Exception) -> int:
    print(f"gcd-trl env: error: {err}", file=sys.stderr)
    return 2


def run_generate(args: argparse.Namespace) -> int:
    try:
        if not args.data_dir:
            raise ArgError("--data_dir is required (the folder the games are written to)")
        if args.generate_games is None:
            raise ArgError("--generate_games is required (how many games)")
        if args.generate_games < 1:
            raise ArgError(f"--generate_games must be >= 1, got {args.generate_games}")
        if args.generate_seed < 0:
            raise ArgError(f"--generate_seed must be >= 0, got {args.generate_seed}")
        types = tuple(args.task_types or range(1, 7))
        bad = [t for t in types if t not in range(1, 7)]
        if bad:
            raise ArgError(f"--task_types must be in 1-6, got {bad[0]}")
        if args.max_receptacles is not None and args.max_receptacles < 3:
            raise ArgError(
                f"--max_receptacles must be >= 3 (a task needs up to 3), got {args.max_receptacles}"
            )
        out = Path(args.data_dir)
        if out.exists() and not out.is_dir():
            raise ArgError(f"--data_dir {out} exists and is not a directory")
    except ArgError as err:
        return _error(err)
    from gcd_trl.envs.alfworld_gen import folder_games, generate_games

    stats: dict[str, Any] = {}
    try:
        games = generate_games(
            str(out),
            args.generate_games,
            args.generate_seed,
            task_types=types,
            grammar=args.grammar,
            add=args.add,
            stats=stats,
            progress=True,
            max_receptacles=args.max_receptacles,
        )
    except (ValueError, RuntimeError) as err:  # GamesFolderError names what the folder holds
        return _error(err)
    total = len(folder_games(out))
    summary = {
        "data_dir": str(out),
        "games": len(games),
        "seed": args.generate_seed,
        "task_types": list(types),
        "max_receptacles": args.max_receptacles,
        "generated": 0 if stats.get("reused") else len(games),
        "total_games": total,
    }
    note = "already there, nothing written" if stats.get("reused") else f"written in {stats['seconds']:.1f}s"
    print(f"{len(games)} games {note}; {out} holds {total} games", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _check_common(args: argparse.Namespace) -> None:
    if args.environment is None:
        raise ArgError("--environment is required (alfworld or scienceworld)")
    if not args.games and not args.split:
        raise ArgError("one of --games DIR or --split L0|L1|L2 is required")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise ArgError(f"--max_tasks must be >= 1, got {args.max_tasks}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise ArgError(f"--max_episode_steps must be >= 1, got {args.max_episode_steps}")
    if args.history_length < 0:
        raise ArgError(f"--history_length must be >= 0, got {args.history_length}")
    if args.environment == "scienceworld":
        if args.games:
            raise ArgError("--games is for alfworld; use --split L0|L1|L2 for scienceworld")
        if args.task_types:
            raise ArgError("--task_types is for alfworld; use --scienceworld_tasks for scienceworld")
        if not JVM_HEAP.match(args.jvm_heap or ""):
            raise ArgError(f"--jvm_heap {args.jvm_heap!r} must look like 512m or 2g")
    else:
        if args.scienceworld_tasks:
            raise ArgError("--scienceworld_tasks is for scienceworld; use --task_types for alfworld")
        bad = [t for t in args.task_types or () if t not in range(1, 7)]
        if bad:
            raise ArgError(f"--task_types must be in 1-6, got {bad[0]}")
        if args.games and not Path(args.games).is_dir():
            raise ArgError(f"--games {args.games}: no such directory")
        if args.data_dir and not Path(args.data_dir).is_dir():
            raise ArgError(f"--data_dir {args.data_dir}: no such directory")


def _env_arguments(args: argparse.Namespace):
    """The run config's view of these flags (the env spec and the prompt template come from it)."""
    from gcd_trl.rollout.settings import EnvArguments

    return EnvArguments(
        environment=args.environment,
        jvm_heap=args.jvm_heap,
        simplifications=args.simplifications,
        alfworld_expert=args.alfworld_expert,
        prompt_template=args.prompt_template,
        meta_reasoning=args.meta_reasoning,
    )


def _prepare(args: argparse.Namespace) -> tuple[list, str, Any, dict[str, str]]:
    """Tasks, template, env spec and the tasks found unplayable before any env starts (id -> reason)."""
    from gcd_trl.commands._common import selected_tasks
    from gcd_trl.config import ConfigError
    from gcd_trl.envs.tasks import playable

    _check_common(args)
    env = _env_arguments(args)
    try:
        template = env.load_template()
        tasks = selected_tasks(args)
    except ConfigError as err:
        raise ArgError(f"--{err}") from None
    except ValueError as err:
        raise ArgError(str(err)) from None
    tasks, bad = playable(tasks, args.games)
    if not tasks:
        first = next(iter(bad.items()))
        raise ArgError(f"none of the {len(bad)} games can be played; e.g. {first[0]}: {first[1]}")
    return tasks, template, env.spec(), bad


def _expert_options(args: argparse.Namespace, template: str, bad: dict[str, str]) -> dict[str, Any]:
    from gcd_trl.envs.tasks import task_id

    return dict(
        template=template,
        max_steps=args.max_episode_steps,
        history_length=args.history_length,
        meta_reasoning=args.meta_reasoning,
        progress=args.env_command,
        name=lambda t: task_id(t, args.games),
        skipped=bad,
    )


def run_expert(args: argparse.Namespace) -> int:
    try:
        if not args.output:
            raise ArgError("--output is required (a .jsonl file)")
        out = Path(args.output)
        if out.is_dir():
            raise ArgError(f"--output {out} is a directory; give a .jsonl file path")
        tasks, template, spec, bad = _prepare(args)
    except (ValueError, FileNotFoundError) as err:  # ArgError, or a split/data problem named by envs
        return _error(err)
    from gcd_trl.rollout.expert import write_expert_jsonl

    summary = write_expert_jsonl(
        spec, tasks, out, only_won=args.only_won, **_expert_options(args, template, bad)
    )
    clean = summary.pop("clean")
    print(json.dumps(summary, indent=1))
    return 0 if clean else 1


def run_replay(args: argparse.Namespace) -> int:
    try:
        tasks, template, spec, bad = _prepare(args)
    except (ValueError, FileNotFoundError) as err:  # ArgError, or a split/data problem named by envs
        return _error(err)
    from gcd_trl.rollout.expert import run_expert as play

    summary, clean = play(spec, tasks, **_expert_options(args, template, bad))
    print(json.dumps(summary, indent=1))
    if not clean:
        print("gcd-trl env: error: no episode ran cleanly (see `failed` in the summary)", file=sys.stderr)
    return 0 if clean else 1
