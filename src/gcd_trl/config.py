"""What every configuration shares: `ConfigError`, the checks that name a key, the YAML reader that
rejects unknown keys and wrongly typed values, and the checks made before a model loads (a model given at
all, parameter precision, model path, a writable output folder).

The dataclasses live beside what they configure: `rollout.settings.EnvArguments` (the env, split and
prompt), `gcd.args.GCDArguments` (the judge task and golden rules), `trainers.grpo_config` (the RL run:
`AgentGRPOConfig`, `parse_rl_config`), `eval.config`, `trainers.sft` and `trainers.value_sft`. Every choice a
field takes is listed once, where it is used (`envs.base.ENV_NAMES`, `envs.splits.LEVELS`,
`advantages.common.ESTIMATORS`, ...), and checked here with `check_choice`. Everything a user can get wrong
is checked before a model or an environment is loaded, naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, named by its key."""


def check_choice(name: str, value: Any, choices: Sequence) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{name}={value!r} must be >= {low}")


def check_at_most(name: str, value: float | None, high: float, why: str) -> None:
    """An upper bound on a size that costs processes or memory; `why` says what the bound protects."""
    if value is not None and value > high:
        raise ConfigError(f"{name}={value!r} must be <= {high}: {why}")


# ---------------------------------------------------------------------------------------------------------
# YAML checks that argparse does not do (it takes YAML values as defaults, unchecked)


def _field_types(classes: Sequence[type]) -> dict[str, tuple[type, Any]]:
    out: dict[str, tuple[type, Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                out.setdefault(f.name, (cls, hints.get(f.name, Any)))
    return out


def _type_ok(value: Any, tp: Any) -> bool | None:
    """True/False when the type can be judged, None when it is too loose to check."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        verdicts = [_type_ok(value, a) for a in typing.get_args(tp)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list):
            return False
        (item,) = typing.get_args(tp) or (Any,)
        verdicts = [_type_ok(v, item) for v in value]
        return False if any(v is False for v in verdicts) else True
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        if isinstance(value, str):  # YAML reads `1e-4` as a string; TrlParser converts it with float()
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def read_yaml(path: Path) -> Any:
    """The content of the YAML config file `path` (None when empty); a missing file or bad YAML is a
    ConfigError naming it."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def check_yaml(path: str | os.PathLike, classes: Sequence[type]) -> dict[str, Any]:
    """Read a config for `classes` and reject unknown keys and wrongly typed values, naming them."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of key: value")
    known = _field_types(classes)
    for key, value in data.items():
        if key == "env" and isinstance(value, dict):
            continue  # TrlParser's environment-variable block
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        cls, tp = known[key]
        if _type_ok(value, tp) is False:
            raise ConfigError(
                f"{path}: key {key!r} ({cls.__name__}) expects {_type_name(tp)}, got {type(value).__name__} {value!r}"
            )
    return data


def parse_dataclasses(
    argv: list[str], classes: Sequence[type], defaults: dict[str, Any] | None = None
) -> tuple:
    """`--config FILE` plus `--key value` overrides, parsed by TRL's `TrlParser` into `classes` (`defaults`
    replace the dataclasses' own). The file is checked first (`check_yaml`); argparse's and the dataclasses'
    own errors become ConfigError."""
    from trl import TrlParser

    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file path")
        check_yaml(argv[i + 1], classes)
    check_known_arguments(argv, classes)
    parser = TrlParser(list(classes))
    if defaults:
        parser.set_defaults(**defaults)
    try:
        return tuple(parser.parse_args_and_config(argv))
    except ConfigError:
        raise
    except SystemExit as err:  # argparse already printed which argument is wrong
        raise ConfigError(
            f"invalid command-line or config value (see the message above): exit {err.code}"
        ) from err
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_known_arguments(
    argv: Sequence[str], classes: Sequence[type], hints: dict[str, str] | None = None
) -> None:
    """Refuse command-line arguments no field takes, naming the first one and the closest field, as the YAML
    check does (HfArgumentParser only lists them as "not used", and only after building the dataclasses,
    whose own checks may fail first on something else). `hints`: key -> what to use instead."""
    from trl import TrlParser

    args = list(argv)
    if "--config" in args:
        i = args.index("--config")
        del args[i : i + 2]
    try:
        _, unknown = TrlParser(list(classes)).parse_known_args(args)
    except SystemExit:  # a bad value or a missing field: the full parse reports it
        return
    if unknown:
        raise unknown_arguments(unknown, classes, hints)


def unknown_arguments(
    remaining: Sequence[str], classes: Sequence[type], hints: dict[str, str] | None = None
) -> ConfigError:
    """The error for command-line arguments no field takes (see `check_known_arguments`)."""
    flags = [a for a in remaining if a.startswith("-")]
    if not flags:
        return ConfigError(f"unexpected argument {remaining[0]!r} (values follow a --key)")
    flag = flags[0].split("=", 1)[0]
    key = flag.lstrip("-").replace("-", "_")
    if hints and key in hints:
        return ConfigError(f"unknown option {flag}: {hints[key]}")
    known = [f.name for cls in classes for f in dataclasses.fields(cls) if f.init]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    return ConfigError(f"unknown option {flag}{hint}")


# ---------------------------------------------------------------------------------------------------------
# Parameter precision: bf16 parameters under a plain optimizer lose every update below their resolution

LOW_PRECISION_DTYPES = ("bfloat16", "float16", "half", "bf16", "fp16")
LOW_PRECISION_OPT_IN = "low_precision_parameters"


def low_precision_field() -> Any:
    """The `low_precision_parameters` opt-in field of every training config (RL, SFT, value SFT)."""
    return field(
        default=False,
        metadata={
            "help": "Allow training bf16/fp16 parameters with a plain optimizer (no fp32 master weights: small "
            "updates vanish). Default: refused; load in float32 with bf16: true, or launch with DeepSpeed/FSDP."
        },
    )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "").lower() if dtype is not None else "auto"


def _checkpoint_dtype(model_name_or_path: str | None) -> str | None:
    """The dtype a checkpoint's config.json names (what `dtype: auto` loads), read without loading it."""
    if not model_name_or_path:
        return None
    path = Path(model_name_or_path).expanduser() / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_name_or_path, "config.json")
        except Exception:  # an id the cache cannot look up: nothing to read, the load decides
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        import json

        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return _dtype_name(data.get("dtype") or data.get("torch_dtype"))


def sharded_launch(train_args: Any) -> str | None:
    """ "deepspeed" or "fsdp" when the launch shards training with an engine that keeps fp32 master weights
    (DeepSpeed's optimizer; accelerate upcasts FSDP's low-precision parameters under mixed precision)."""
    truthy = ("1", "true", "yes")
    if (
        getattr(train_args, "deepspeed", None)
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in truthy
    ):
        return "deepspeed"
    if getattr(train_args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in truthy:
        return "fsdp"
    return None


def check_parameter_precision(
    dtype: Any, train_args: Any, model_name_or_path: str | None, *, use_peft: bool, allowed: bool
) -> str | None:
    """Refuse to train bf16/fp16 parameters with a plain optimizer, before any model loads.

    AdamW on bf16 weights rounds every update to the weight's resolution: at lr 1e-6 only ~2% of the
    entries move in 50 steps and RMSNorm gains never do (DESIGN.md). Fine: float32 weights with `bf16:
    true` (autocast compute), a DeepSpeed or FSDP launch (fp32 masters), LoRA (PEFT keeps adapters in
    float32), or the explicit opt-in. Returns the parameters' dtype name."""
    name = _dtype_name(dtype)
    if name == "auto":
        name = _checkpoint_dtype(model_name_or_path) or "auto"
    if name not in LOW_PRECISION_DTYPES or use_peft or allowed or sharded_launch(train_args):
        return name
    source = "dtype" if _dtype_name(dtype) != "auto" else f"dtype: auto (the checkpoint's config says {name})"
    raise ConfigError(
        f"{source}: the parameters would be trained in {name} with a plain optimizer and no fp32 master "
        "weights, so updates below bf16's resolution vanish (at lr 1e-6 only ~2% of the entries move). Load "
        "in float32 (`dtype: float32`) and compute in bf16 with `bf16: true`, launch with DeepSpeed or FSDP "
        f"(they keep fp32 masters), or set `{LOW_PRECISION_OPT_IN}: true` to train {name} parameters anyway"
    )


def check_training_precision(train_args: Any, model_args: Any, allowed: bool) -> str | None:
    """`check_parameter_precision` for a run's arguments: the dtype of `model_init_kwargs` (TRL's) or else
    ModelConfig's, and LoRA from ModelConfig."""
    return check_parameter_precision(
        (getattr(train_args, "model_init_kwargs", None) or {}).get("dtype", model_args.dtype),
        train_args,
        model_args.model_name_or_path,
        use_peft=bool(model_args.use_peft),
        allowed=allowed,
    )


def check_model_path(name: str) -> None:
    """Before a model loads: a local model directory must hold a saved model (config.json); a Hub id must be
    in the cache when offline (HF_HUB_OFFLINE=1). Raises ConfigError naming model_name_or_path."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model_name_or_path {name}: the directory has no config.json (not a saved model)"
            )
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model_name_or_path {name}: no such directory")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ConfigError(
                f"model_name_or_path {name}: not a directory, and not in the hub cache (HF_HUB_OFFLINE=1)"
            )


def check_model_given(argv: Sequence[str], command: str = "rl") -> None:
    """`model_name_or_path` must come from `--config FILE` or the command line. Checked on the raw argv,
    before TRL is imported: without it TrainingArguments fails first, after seconds of imports, on an
    unrelated default (bf16 without a GPU) that never says the model is missing."""
    argv = list(argv)
    if any(a == "--model_name_or_path" or a.startswith("--model_name_or_path=") for a in argv):
        return
    if "--config" not in argv:
        raise ConfigError(
            f"no run config and no model: give --config FILE (e.g. configs/{command}/...yaml) or at least "
            f"--model_name_or_path DIR (`gcd-trl {command} -h` lists every key)"
        )
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ConfigError("--config needs a file path")
    path = Path(argv[i + 1])
    data = read_yaml(path)
    if not isinstance(data, dict) or not data.get("model_name_or_path"):
        raise ConfigError(
            f"{path}: model_name_or_path is not set (the model to train: a saved model folder or a Hub "
            "id); set it in the file or pass --model_name_or_path"
        )


def check_writable_dir(key: str, folder: str | os.PathLike) -> None:
    """Before a model loads: `folder` (or, when it does not exist yet, the folder it would be created in)
    must take a new file. Probed by creating and removing a temporary file, which catches what mode bits
    do not: a read-only file system, a full quota, root squash. Raises ConfigError naming `key`."""
    import tempfile

    path = Path(folder).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key} {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gcd-trl-write-probe-", dir=existing)
    except OSError as err:
        where = "" if existing == path else f" (it would be created in {existing})"
        raise ConfigError(f"{key} {path}: cannot write there{where}: {err.strerror or err}") from None
    os.close(fd)
    os.unlink(probe)


# report_to value -> (module to import, how to install it)
REPORTERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard (a default dependency of gcd-trl)"),
    "trackio": ("trackio", "pip install 'gcd-trl[trackio]'"),
    "wandb": ("wandb", "pip install 'gcd-trl[wandb]'"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "comet_ml": ("comet_ml", "pip install comet_ml"),
    "clearml": ("clearml", "pip install clearml"),
    "swanlab": ("swanlab", "pip install swanlab"),
    "dvclive": ("dvclive", "pip install dvclive"),
    "neptune": ("neptune", "pip install neptune"),
    "codecarbon": ("codecarbon", "pip install codecarbon"),
}


def check_report_to(report_to: str | Sequence[str] | None) -> None:
    """Every `report_to` integration must be importable: fail before the model loads, naming the package
    and how to install it (transformers would only fail after loading the model)."""
    if report_to is None:
        return
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    for name in names:
        name = str(name).strip()
        if name in ("", "none", "all"):
            continue
        module, how = REPORTERS.get(name, (None, None))
        if module is None:
            continue  # transformers knows it (or rejects it with its own message)
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to={name}: the {module!r} package is not installed ({how})")
