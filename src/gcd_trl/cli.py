"""`gcd-trl` command line: one subcommand per job, each defined in `gcd_trl.commands.<name>`.

Command modules import heavy libraries (torch, TRL, the env engines) inside their handlers, so
`gcd-trl --help` and input validation stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# pipeline order first (data, sft, rl, eval, analyze), then tools; a module not built yet is skipped
COMMANDS = ("data", "sft", "rl", "eval", "analyze", "judge", "tiny_model", "config", "env", "advantages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcd-trl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gcd_trl.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"gcd_trl.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    code = args.func(args, rest) if getattr(args, "accepts_extra", False) else args.func(args)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
