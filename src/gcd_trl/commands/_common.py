"""What every command's argument parsing shares, so the CLI behaves like `trl`: `-h` that lists every config
field (as `trl grpo -h` does), `--accelerate_config NAME|FILE --num_processes N` that relaunch the command
under `accelerate launch` (`gcd_trl.launch`), old flag spellings, and flags that reject non-finite
numbers. Status lines printed once are `gcd_trl.dist.print_once`; checks before a model loads live in
`gcd_trl.config`.

Nothing here imports torch, TRL or an env engine at module level: `gcd-trl -h` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class CommandError(ValueError):
    """A bad input found by shared command code (printed as `gcd-trl COMMAND: MESSAGE`, exit 2)."""


# ---------------------------------------------------------------------------------------------------------
# Argument types


def finite_float(text: str) -> float:
    """argparse `type`: a float that is not nan or +-inf (`float()` accepts both)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_alias(parser: argparse.ArgumentParser, *old: str, dest: str, **kwargs: Any) -> None:
    """Old spellings of a flag (e.g. `--max-steps` for `--max_episode_steps`): accepted, hidden from -h."""
    parser.add_argument(*old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def add_command(
    sub: argparse._SubParsersAction, name: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """A plain subcommand (its own argparse flags, not config fields) whose -h shows every default."""
    return sub.add_parser(
        name, help=help, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


# ---------------------------------------------------------------------------------------------------------
# Commands backed by TrlParser dataclasses (rl, sft, eval)


def lazy(module: str, attribute: str) -> Callable[[], Any]:
    """`module.attribute`, imported when called (so building the parser imports nothing heavy)."""
    import importlib

    return lambda: getattr(importlib.import_module(module), attribute)


def add_trl_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    config_help: str,
    launch: bool = True,
    dataclasses: Callable[[], Sequence[type]] | None = None,
    main: Callable[[list[str]], int] | None = None,
    check: Callable[[], Callable[[list[str]], None]] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose options are the fields of TrlParser dataclasses.

    `-h` is answered by `print_trl_help` (every field with its help and default); `--config` is optional
    (any field can be given as `--key value`); with `launch`, `--accelerate_config` / `--num_processes`
    relaunch the command under accelerate (`gcd_trl.launch`). Unparsed arguments reach the handler as
    `rest`. With `dataclasses` (their loader) and `main(argv) -> exit code`, the handler is `trl_prelude`
    then `main` with the argv for TrlParser; `check` (its loader) gives the checks made once before a
    relaunch (default: every argument names a field).
    """
    p = sub.add_parser(name, help=help, description=description, add_help=False, allow_abbrev=False)
    p.add_argument(
        "-h",
        "--help",
        action="store_true",
        help="Show every config field with its help and default, then exit.",
    )
    p.add_argument("--config", default=None, metavar="FILE", help=config_help)
    if launch:
        add_launch_arguments(p)
    p.set_defaults(accepts_extra=True)
    if main is not None and dataclasses is not None:

        def handler(args: argparse.Namespace, rest: list[str]) -> int:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            argv = trl_prelude(args, rest, name, dataclasses, description, check)
            return argv if isinstance(argv, int) else main(argv)  # int: -h, or the launched processes' code

        p.set_defaults(func=handler)
    return p


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    from gcd_trl.launch import ACCELERATE_CONFIG_NAMES

    p.add_argument(
        "--accelerate_config",
        default=None,
        metavar="NAME|FILE",
        help="Launch through `accelerate launch` with this config: a file, or a name: "
        + ", ".join(ACCELERATE_CONFIG_NAMES)
        + " (configs/accelerate/), or any of TRL's (zero1, fsdp1, ...).",
    )
    p.add_argument(
        "--num_processes",
        type=int,
        default=None,
        metavar="N",
        help="Processes to launch (with --accelerate_config: overrides the file's; alone: the cpu config "
        "without a GPU, else single_gpu / multi_gpu).",
    )


def print_trl_help(
    prog: str,
    dataclass_types: Sequence[type],
    description: str | None = None,
    *,
    launch: bool = True,
    config_help: str = "A YAML file of field values; fields given on the command line win.",
) -> int:
    """Print what `trl grpo -h` prints for these dataclasses (every field, its help and default), plus the
    launch options. Returns 0 (the exit code)."""
    from trl import TrlParser

    parser = TrlParser(list(dataclass_types), prog=prog, description=description)
    group = parser.add_argument_group("config file and launcher")
    group.add_argument("--config", metavar="FILE", help=config_help)
    if launch:
        add_launch_arguments(group)  # type: ignore[arg-type]
    for action in parser._actions:  # a field's help may say "1% of it": argparse would read "% o"
        if action.help and action.help is not argparse.SUPPRESS:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
    parser.print_help()
    return 0


def config_argv(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The argv for TrlParser: `--config FILE` when given, then the --key value overrides."""
    return (["--config", args.config] if getattr(args, "config", None) else []) + list(rest)


def trl_prelude(
    args: argparse.Namespace,
    rest: list[str],
    command: str,
    dataclass_types: Callable[[], Sequence[type]],
    description: str | None = None,
    check: Callable[[], Callable[[list[str]], None]] | None = None,
) -> int | list[str]:
    """The common start of a TrlParser-backed handler: `-h` prints the field help (returns 0); the launch
    flags relaunch under accelerate (returns its exit code) after the checks `check()` gives (default:
    every argument names a field), so bad input is one line and exit 2 rather than every rank failing;
    otherwise returns the argv for TrlParser.

        argv = trl_prelude(args, rest, "sft", lambda: SFT_DATACLASSES)
        if isinstance(argv, int):
            return argv
    """
    if getattr(args, "help", False):
        return print_trl_help(f"gcd-trl {command}", dataclass_types(), description)
    from gcd_trl.config import ConfigError, check_known_arguments
    from gcd_trl.launch import maybe_launch

    def checks(argv: list[str]) -> None:
        if check is not None:
            check()(argv)
        else:
            check_known_arguments(argv, dataclass_types())

    try:
        code = maybe_launch(
            command,
            config_argv(args, rest),
            getattr(args, "accelerate_config", None),
            getattr(args, "num_processes", None),
            getattr(args, "config", None),
            check=checks,
        )
    except ConfigError as err:
        print(f"gcd-trl {command}: {err}", file=sys.stderr)
        return 2
    if code is not None:
        return code
    return config_argv(args, rest)


# ---------------------------------------------------------------------------------------------------------
# Checks before a model loads


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> Path:
    """An output file path: not a directory (its folder is created when written)."""
    out = Path(path)
    if out.is_dir():
        raise CommandError(f"{flag} {out}: is a directory; give a file path")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise CommandError(f"{flag} {out}: {parent} is a file, not a folder")
    return out


def selected_tasks(args: argparse.Namespace) -> list:
    """The tasks the task flags name (--games | --split/--part/--data_dir, --task_types,
    --scienceworld_tasks, --max_tasks), through the one task selector (`gcd_trl.envs.tasks`)."""
    from gcd_trl.envs.tasks import select_tasks

    return select_tasks(
        args.environment,
        args.split,
        args.part,
        args.data_dir,
        games=args.games or None,
        task_types=args.task_types,
        scienceworld_tasks=args.scienceworld_tasks,
        max_tasks=args.max_tasks,
    )
