"""`gcd-trl env ...`: generate ALFWorld games, write expert demonstrations, replay the expert.

    gcd-trl env generate-alfworld --out DIR --num N [--seed S] [--task-types 1 2 ...]
    gcd-trl env expert --env alfworld --games DIR [--limit N] --out FILE.jsonl
    gcd-trl env expert --env scienceworld --split L0 [--part train|test] [--limit N] --out FILE.jsonl
    gcd-trl env replay --env alfworld --games DIR [--limit N]
    gcd-trl env replay --env scienceworld --split L2 --part test [--limit N]

Arguments are checked before any env starts. `--limit N` takes tasks round-robin across task types
(ALFWorld) or task names (ScienceWorld), in split order, so a small limit still covers every type.
Summaries are printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

LEVELS = ("L0", "L1", "L2")


class ArgError(ValueError):
    """A bad command-line argument, reported before any env starts."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="Generate ALFWorld games, write expert data, replay the expert.")
    esub = p.add_subparsers(dest="env_command", required=True, metavar="ACTION")

    gen = esub.add_parser("generate-alfworld", help="Write solvable ALFWorld games (json_2.1.1 layout).")
    gen.add_argument("--out", required=True, help="Output directory.")
    gen.add_argument("--num", type=int, required=True, help="Number of games.")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--grammar",
        choices=("dataset", "wheel"),
        default="dataset",
        help="Command wording: 'dataset' as ALFWorld's released games ('put X in/on Y'), "
        "'wheel' as alfworld 0.4.2's own grammar ('move X to Y'). Default dataset.",
    )
    gen.add_argument(
        "--task-types",
        type=int,
        nargs="+",
        default=None,
        metavar="T",
        help="ALFWorld task types 1-6 (default: all).",
    )
    gen.set_defaults(func=run_generate)

    for name, helptext in (
        ("expert", "Play the expert and write one JSONL record per step."),
        ("replay", "Play the expert and print a success summary."),
    ):
        q = esub.add_parser(name, help=helptext)
        q.add_argument("--env", required=True, choices=("alfworld", "scienceworld"))
        src = q.add_mutually_exclusive_group(required=True)
        src.add_argument("--games", help="ALFWorld: a directory of games (searched recursively).")
        src.add_argument("--split", choices=LEVELS, help="A benchmark split level.")
        q.add_argument(
            "--part", choices=("train", "test"), default="train", help="Part of --split (default train)."
        )
        q.add_argument(
            "--data-dir",
            default=None,
            help="ALFWorld --split: the folder holding json_2.1.1 (default $ALFWORLD_DATA).",
        )
        q.add_argument(
            "--task-types",
            type=int,
            nargs="+",
            default=None,
            metavar="T",
            help="ALFWorld: only these task types (1-6).",
        )
        q.add_argument(
            "--task-names",
            nargs="+",
            default=None,
            metavar="NAME",
            help="ScienceWorld: only these task names (e.g. boil find-living-thing).",
        )
        q.add_argument("--limit", type=int, default=None, help="At most N tasks (round-robin across types).")
        q.add_argument(
            "--max-steps",
            type=int,
            default=None,
            help="Step limit per episode (default: 50 alfworld, 100 scienceworld).",
        )
        q.add_argument("--history-length", type=int, default=2, help="History pairs shown in the prompt.")
        q.add_argument(
            "--meta-reasoning", action="store_true", help="RLVMR format (meta tags, *_rlvmr template)."
        )
        q.add_argument(
            "--template",
            default=None,
            help="Agent prompt template: a built-in name or a .txt file (default: by env).",
        )
        q.add_argument("--alfworld-expert", choices=("handcoded", "planner"), default="handcoded")
        q.add_argument("--jvm-heap", default="512m", help="ScienceWorld: JVM heap (-Xmx).")
        q.add_argument(
            "--simplifications", default="easy", help="ScienceWorld simplifications preset or list."
        )
        if name == "expert":
            q.add_argument("--out", required=True, help="Output JSONL file.")
            q.add_argument("--only-won", action="store_true", help="Write only episodes the expert won.")
        q.set_defaults(func=run_expert if name == "expert" else run_replay)


def _error(err: Exception) -> int:
    print(f"gcd-trl env: error: {err}", file=sys.stderr)
    return 2


def run_generate(args: argparse.Namespace) -> int:
    try:
        if args.num < 1:
            raise ArgError(f"--num must be >= 1, got {args.num}")
        if args.seed < 0:
            raise ArgError(f"--seed must be >= 0, got {args.seed}")
        types = tuple(args.task_types or range(1, 7))
        bad = [t for t in types if t not in range(1, 7)]
        if bad:
            raise ArgError(f"--task-types must be in 1-6, got {bad[0]}")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ArgError(f"--out {out} exists and is not a directory")
    except ArgError as err:
        return _error(err)
    from gcd_trl.envs.alfworld_gen import generate_games

    try:
        games = generate_games(str(out), args.num, args.seed, task_types=types, grammar=args.grammar)
    except (ValueError, RuntimeError) as err:
        return _error(err)
    print(json.dumps({"out": str(out), "games": len(games), "seed": args.seed, "task_types": list(types)}))
    return 0


def _check_common(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise ArgError(f"--limit must be >= 1, got {args.limit}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ArgError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.history_length < 0:
        raise ArgError(f"--history-length must be >= 0, got {args.history_length}")
    if args.env == "scienceworld":
        if args.games:
            raise ArgError("--games is for alfworld; use --split L0|L1|L2 for scienceworld")
        if args.task_types:
            raise ArgError("--task-types is for alfworld; use --task-names for scienceworld")
    else:
        if args.task_names:
            raise ArgError("--task-names is for scienceworld; use --task-types for alfworld")
        bad = [t for t in args.task_types or () if t not in range(1, 7)]
        if bad:
            raise ArgError(f"--task-types must be in 1-6, got {bad[0]}")
        if args.games and not Path(args.games).is_dir():
            raise ArgError(f"--games {args.games}: no such directory")
        if args.data_dir and not Path(args.data_dir).is_dir():
            raise ArgError(f"--data-dir {args.data_dir}: no such directory")


def _template(args: argparse.Namespace) -> str:
    from gcd_trl.prompts import TemplateError, default_agent_template, load_template

    try:
        return load_template(args.template or default_agent_template(args.env, args.meta_reasoning))
    except TemplateError as err:
        raise ArgError(f"--template: {err}") from None


def _type_key(task: Any) -> Any:
    return task.task_type if task.env == "alfworld" else task.task_name


def round_robin(tasks: list, limit: int | None) -> list:
    """Up to `limit` tasks taken in turn from each type, keeping split order within a type."""
    if limit is None or limit >= len(tasks):
        return tasks
    queues: dict[Any, list] = {}
    for t in tasks:
        queues.setdefault(_type_key(t), []).append(t)
    picked: list = []
    while len(picked) < limit:
        for q in queues.values():
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return picked


def select_tasks(args: argparse.Namespace) -> list:
    """The tasks named by --games/--split/--part/--task-*/--limit (no env is started)."""
    from gcd_trl.envs.base import Task

    if args.env == "alfworld" and args.games:
        from gcd_trl.envs.alfworld import list_games, task_type_of

        games = list_games(args.games, task_types=args.task_types)
        tasks = [
            Task(env="alfworld", split=Path(args.games).name, game=g, task_type=task_type_of(g))
            for g in games
        ]
        if not tasks:
            raise ArgError(
                f"--games {args.games}: no playable ALFWorld games found (game.tw-pddl + traj_data.json)"
            )
    else:
        from gcd_trl.envs.splits import split_tasks

        tasks = split_tasks(args.env, args.split, args.part, args.data_dir)
        if args.task_types:
            tasks = [t for t in tasks if t.task_type in args.task_types]
        if args.task_names:
            known = {t.task_name for t in tasks}
            unknown = [n for n in args.task_names if n not in known]
            if unknown:
                raise ArgError(
                    f"--task-names: {unknown[0]!r} is not a task of {args.split} {args.part}; "
                    f"known: {', '.join(sorted(known))}"
                )
            tasks = [t for t in tasks if t.task_name in args.task_names]
    if not tasks:
        raise ArgError("no tasks match the given --split/--part/--task-* options")
    return round_robin(tasks, args.limit)


def _prepare(args: argparse.Namespace) -> tuple[list, str, Any]:
    from gcd_trl.envs.base import EnvSpec

    _check_common(args)
    template = _template(args)
    tasks = select_tasks(args)
    spec = EnvSpec(
        env=args.env,
        jvm_heap=args.jvm_heap,
        simplifications=args.simplifications,
        alfworld_expert=args.alfworld_expert,
    )
    return tasks, template, spec


def _play_kwargs(args: argparse.Namespace, template: str) -> dict[str, Any]:
    return {
        "template": template,
        "max_steps": args.max_steps,
        "history_length": args.history_length,
        "meta_reasoning": args.meta_reasoning,
    }


def run_expert(args: argparse.Namespace) -> int:
    try:
        out = Path(args.out)
        if out.is_dir():
            raise ArgError(f"--out {out} is a directory; give a .jsonl file path")
        tasks, template, spec = _prepare(args)
    except (ValueError, FileNotFoundError) as err:  # ArgError, or a split/data problem named by envs
        return _error(err)
    from gcd_trl.rollout.expert import write_expert_jsonl

    summary = write_expert_jsonl(spec, tasks, out, only_won=args.only_won, **_play_kwargs(args, template))
    print(json.dumps(summary, indent=1))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    try:
        tasks, template, spec = _prepare(args)
    except (ValueError, FileNotFoundError) as err:  # ArgError, or a split/data problem named by envs
        return _error(err)
    from gcd_trl.rollout.expert import replay

    summary = replay(spec, tasks, **_play_kwargs(args, template))
    print(json.dumps(summary, indent=1))
    return 0
