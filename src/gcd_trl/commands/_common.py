"""What every command shares, so the CLI behaves like `trl`: `-h` that lists every config field (as
`trl grpo -h` does), `--accelerate_config NAME|FILE --num_processes N` that relaunch the command under
`accelerate launch`, status lines printed once (not once per rank), `report_to` checked before a model
loads, and flags that reject non-finite numbers.

Nothing here imports torch, TRL or an env engine at module level: `gcd-trl -h` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gcd_trl.dist import print_once, world_size

REPO_ACCELERATE_CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "accelerate"
# Named like TRL's; a name is looked up in configs/accelerate/ first, then in trl/accelerate_configs.
ACCELERATE_CONFIG_NAMES = ("cpu", "single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2")


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


# ---------------------------------------------------------------------------------------------------------
# Commands backed by TrlParser dataclasses (rl, sft, eval)


def add_trl_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    config_help: str,
    launch: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand whose options are the fields of TrlParser dataclasses.

    `-h` is answered by `print_trl_help` (every field with its help and default); `--config` is optional
    (any field can be given as `--key value`); with `launch`, `--accelerate_config` / `--num_processes`
    relaunch the command under accelerate (`maybe_launch`). Unparsed arguments reach the handler as `rest`.
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
    return p


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
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
) -> int | list[str]:
    """The common start of a TrlParser-backed handler: `-h` prints the field help (returns 0); the launch
    flags relaunch under accelerate (returns its exit code); otherwise returns the argv for TrlParser.

        argv = trl_prelude(args, rest, "sft", lambda: SFT_DATACLASSES)
        if isinstance(argv, int):
            return argv
    """
    if getattr(args, "help", False):
        return print_trl_help(f"gcd-trl {command}", dataclass_types(), description)
    try:
        code = maybe_launch(command, args, rest)
    except CommandError as err:
        print(f"gcd-trl {command}: {err}", file=sys.stderr)
        return 2
    if code is not None:
        return code
    return config_argv(args, rest)


# ---------------------------------------------------------------------------------------------------------
# Launching through accelerate


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A file path as given; else configs/accelerate/NAME.yaml; else TRL's packaged NAME.yaml."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    stem = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    for folder in (Path.cwd() / "configs" / "accelerate", REPO_ACCELERATE_CONFIGS):
        candidate = folder / f"{stem}.yaml"
        if "/" not in stem and candidate.is_file():
            return candidate
    from importlib import resources

    try:
        candidate = resources.files("trl.accelerate_configs").joinpath(f"{stem}.yaml")
        if "/" not in stem and candidate.is_file():
            return Path(str(candidate))
    except ModuleNotFoundError:
        pass
    ours = (
        sorted(p.stem for p in REPO_ACCELERATE_CONFIGS.glob("*.yaml"))
        if REPO_ACCELERATE_CONFIGS.is_dir()
        else []
    )
    raise CommandError(
        f"--accelerate_config {name_or_path}: neither a file nor a known config name "
        f"(ours: {', '.join(ours) or 'none found'}; TRL's: single_gpu, multi_gpu, zero1, zero2, zero3, fsdp1, "
        "fsdp2)"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise CommandError(f"--accelerate_config {path}: cannot read it ({err})") from None
    if not isinstance(data, dict):
        raise CommandError(f"--accelerate_config {path}: not a YAML mapping")
    return data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_cuda() -> bool:
    """Whether a CUDA device is visible, without importing torch (nvidia-smi's device files)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def accelerate_launch_args(
    accelerate_config: str | None, num_processes: int | None
) -> tuple[list[str], bool]:
    """`accelerate launch` options for a config name/file and a process count, and whether it is a CPU run.

    A CPU config (`use_cpu: true`) with more than one process is launched through torchrun's launcher
    (accelerate's `--multi_gpu` path, gloo backend): accelerate alone would start one process on CPU.
    """
    if num_processes is not None and num_processes < 1:
        raise CommandError(f"--num_processes must be >= 1, got {num_processes}")
    if accelerate_config is None:
        if _has_cuda():
            accelerate_config = "multi_gpu" if (num_processes or 1) > 1 else "single_gpu"
        else:
            accelerate_config = "cpu"
    path = resolve_accelerate_config(accelerate_config)
    cfg = _read_yaml(path)
    n = num_processes or int(cfg.get("num_processes") or 1)
    cpu = bool(cfg.get("use_cpu")) or not _has_cuda()
    out = ["--config_file", str(path), "--num_processes", str(n)]
    if cpu and n > 1 and str(cfg.get("distributed_type", "NO")).upper() == "NO":
        out.append("--multi_gpu")
    if n > 1 and int(cfg.get("num_machines") or 1) == 1 and not cfg.get("main_process_port"):
        out += ["--main_process_port", str(_free_port())]  # two runs on one node must not collide on 29500
    return out, cpu


def maybe_launch(command: str, args: argparse.Namespace, rest: list[str]) -> int | None:
    """Relaunch `gcd-trl COMMAND ...` under accelerate when --accelerate_config / --num_processes are given
    (and we are not already a launched process). Returns the exit code, or None to run here."""
    config = getattr(args, "accelerate_config", None)
    n = getattr(args, "num_processes", None)
    if config is None and n is None:
        return None
    if "LOCAL_RANK" in os.environ and world_size() > 1:
        raise CommandError(
            "--accelerate_config / --num_processes given inside an already launched process: "
            "use either `accelerate launch ... -m gcd_trl` or these flags, not both"
        )
    launch_args, cpu = accelerate_launch_args(config, n)
    config_file = getattr(args, "config", None)
    if config_file and not Path(config_file).is_file():  # say it once, here, not once per launched rank
        raise CommandError(f"config file not found: {config_file}")
    from accelerate.commands.launch import launch_command, launch_command_parser

    script = ["-m", "gcd_trl", command, *config_argv(args, rest)]
    parsed = launch_command_parser().parse_args([*launch_args, *script])
    print_once(f"gcd-trl {command}: accelerate launch {' '.join(launch_args)} {' '.join(script)}")
    saved = os.environ.get("ACCELERATE_USE_CPU")
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"  # TrainingArguments then picks the gloo CPU backend
    try:
        launch_command(parsed)
    except SystemExit as err:  # accelerate exits with the failed worker's code
        return int(err.code or 0) if not isinstance(err.code, str) else 1
    except Exception as err:  # torchrun's ChildFailedError, CalledProcessError: already reported above
        print(f"gcd-trl {command}: launched processes failed: {type(err).__name__}", file=sys.stderr)
        return 1
    finally:
        if saved is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = saved
    return 0


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
