"""Relaunching a command under `accelerate launch`: `gcd-trl rl --accelerate_config zero2 --num_processes 8`
is `accelerate launch --config_file ... -m gcd_trl rl ...`. A config name is looked up in the project's
configs/accelerate/ (from the repository root, the current folder), then in TRL's packaged configs; a CPU
config with several processes goes through torchrun's launcher (gloo backend).

Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gcd_trl.config import ConfigError
from gcd_trl.dist import print_once, world_size

CONFIGS = Path("configs") / "accelerate"
# Named like TRL's; a name is looked up in ./configs/accelerate/ first, then in trl/accelerate_configs.
ACCELERATE_CONFIG_NAMES = ("cpu", "single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2")


def resolve_accelerate_config(name_or_path: str) -> Path:
    """A file path as given; else ./configs/accelerate/NAME.yaml (the project's configs, from the repository
    root); else TRL's packaged NAME.yaml."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    stem = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    candidate = Path.cwd() / CONFIGS / f"{stem}.yaml"
    if "/" not in stem and candidate.is_file():
        return candidate
    from importlib import resources

    try:
        candidate = resources.files("trl.accelerate_configs").joinpath(f"{stem}.yaml")
        if "/" not in stem and candidate.is_file():
            return Path(str(candidate))
    except ModuleNotFoundError:
        pass
    here = Path.cwd() / CONFIGS
    ours = sorted(p.stem for p in here.glob("*.yaml")) if here.is_dir() else []
    raise ConfigError(
        f"--accelerate_config {name_or_path}: neither a file nor a known config name "
        f"(ours, in ./{CONFIGS}: {', '.join(ours) or 'none found here'}; "
        "TRL's: single_gpu, multi_gpu, zero1, zero2, zero3, fsdp1, "
        "fsdp2)"
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--accelerate_config {path}: cannot read it ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--accelerate_config {path}: not a YAML mapping")
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
        raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
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


def maybe_launch(
    command: str,
    argv: list[str],
    config: str | None,
    n: int | None,
    config_file: str | None = None,
    check: Callable[[list[str]], None] | None = None,
) -> int | None:
    """Relaunch `gcd-trl COMMAND ARGV` under accelerate when an accelerate config (`config`) or a process
    count (`n`) is given and we are not already a launched process. `config_file` (the run config) and
    `check(argv)` (the command's checks before a model loads; raises ConfigError) run once here, in the
    launched processes' environment, rather than once per rank behind torchrun's report of failed
    children. Returns the exit code (2 when every failed process exited 2: bad input), or None to run
    here."""
    if config is None and n is None:
        return None
    if "LOCAL_RANK" in os.environ and world_size() > 1:
        raise ConfigError(
            "--accelerate_config / --num_processes given inside an already launched process: "
            "use either `accelerate launch ... -m gcd_trl` or these flags, not both"
        )
    launch_args, cpu = accelerate_launch_args(config, n)
    if config_file and not Path(config_file).is_file():  # say it once, here, not once per launched rank
        raise ConfigError(f"config file not found: {config_file}")
    from accelerate.commands.launch import launch_command, launch_command_parser

    script = ["-m", "gcd_trl", command, *argv]
    parsed = launch_command_parser().parse_args([*launch_args, *script])
    saved = os.environ.get("ACCELERATE_USE_CPU")
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"  # TrainingArguments then picks the gloo CPU backend
    try:
        if check is not None:
            check(argv)
        print_once(f"gcd-trl {command}: accelerate launch {' '.join(launch_args)} {' '.join(script)}")
        launch_command(parsed)
    except SystemExit as err:  # accelerate exits with the failed worker's code
        return int(err.code or 0) if not isinstance(err.code, str) else 1
    except ConfigError:
        raise
    except Exception as err:  # torchrun's ChildFailedError, CalledProcessError: already reported above
        codes = {getattr(f, "exitcode", None) for f in getattr(err, "failures", {}).values()}
        print(f"gcd-trl {command}: launched processes failed: {type(err).__name__}", file=sys.stderr)
        return 2 if codes == {2} else 1
    finally:
        if saved is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = saved
    return 0
