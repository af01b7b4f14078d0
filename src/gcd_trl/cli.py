"""`gcd-trl` command line: one subcommand per job, each defined in `gcd_trl.commands.<name>`.

Command modules import heavy libraries (torch, TRL, the env engines) inside their handlers, so
`gcd-trl --help` and input validation stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# pipeline order first (data, sft, rl, eval, analyze), then tools; a module not built yet is skipped
COMMANDS = (
    "data",
    "sft",
    "rl",
    "eval",
    "analyze",
    "push",
    "value_sft",
    "judge",
    "tiny_model",
    "config",
    "env",
    "advantages",
)

EPILOG = """\
a typical run, in pipeline order:
  gcd-trl tiny-model --output_dir outputs/tiny-model          # or use a real model
  gcd-trl env generate-alfworld --data_dir outputs/games --generate_games 12
  gcd-trl data agent-sft ...                                  # cold-start data (expert episodes)
  gcd-trl sft --config configs/sft/FILE.yaml                  # cold start
  gcd-trl value-sft --config configs/ablations/FILE.yaml      # or the value-head baseline's cold start
  gcd-trl rl --config configs/rl/tiny_alfworld_grpo.yaml      # GRPO / GiGPO / RLVMR (+ GCD)
  gcd-trl rl --config FILE --accelerate_config zero2 --num_processes 8
  gcd-trl eval --config configs/eval/FILE.yaml                # success rate on a split
  gcd-trl push outputs/RUN --eval_dir outputs/RUN/eval/L0     # the model and its card to the Hub
  gcd-trl analyze all --run outputs/tiny_alfworld_grpo        # the paper's diagnostics

`gcd-trl COMMAND -h` lists a command's options; rl, sft, value-sft and eval list every config field with its
default (any field can be given as --key value, on top of --config FILE).
"""


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from gcd_trl import __version__

    parts = [f"gcd-trl {__version__}"]
    for name in ("trl", "transformers", "torch"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} not installed")
    return ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gcd-trl",
        description="Multi-turn agent RL (GRPO, GiGPO, RLVMR) with GCD, for ALFWorld and ScienceWorld, on TRL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=_versions(), help="Print the versions of gcd-trl, TRL, torch."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `gcd-trl` alone: the full help, as `trl` does
        parser.print_help()
        sys.exit(0)
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:
        parser.error(f"choose a COMMAND (got {' '.join(argv)}); `gcd-trl` alone lists them")
    if rest and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    code = args.func(args, rest) if getattr(args, "accepts_extra", False) else args.func(args)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
