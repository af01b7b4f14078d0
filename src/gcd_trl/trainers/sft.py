"""Cold start: supervised fine-tuning on agent (and judge) data with TRL's `SFTTrainer`.

One YAML file, parsed by TRL's `TrlParser` into TRL's `SFTConfig` (so any SFTConfig field can be set in
the file or overridden as `--key value`, as with `trl sft`), `SFTDataArguments` (below: which datasets,
mixed by weight) and TRL's `ModelConfig` (model path, LoRA through peft):

    datasets:
      - {path: data/alfworld/agent_sft, weight: 1.0}       # a builder's folder, a .jsonl/.parquet, or a Hub id
      - {path: data/alfworld/judge_sft, weight: 0.5}
    assistant_only_loss: true                              # loss on the assistant turns only

Every dataset must have a `messages` column (chat conversations, as the builders write them); only that
column is used, so datasets with different metadata mix. A weight w gives round(w x rows) rows: whole
copies plus a seeded sample for the fraction (w=2 doubles a dataset, w=0.5 takes half). The mixture is
shuffled with `mix_seed`. The model card names every dataset and its weight.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import ModelConfig, SFTConfig, TrlParser

from gcd_trl.config import (
    ConfigError,
    check_known_arguments,
    check_report_to,
    check_training_precision,
    low_precision_field,
)
from gcd_trl.hub import HubError, check_hub, check_push_settings, push_folder
from gcd_trl.trainers.card import sft_card, write_run_config

DATA_FILE_NAMES = ("train.jsonl", "train.parquet")


class SFTInputError(ValueError):
    """A bad SFT config or dataset, found before the model is loaded (names the key, file or column)."""


@dataclass
class SFTDatasetSpec:
    """One dataset of the mixture."""

    path: str  # a builder's output folder, a .jsonl / .json / .parquet file, or a Hub dataset id
    weight: float = 1.0  # rows taken: round(weight x rows); >1 repeats the dataset
    name: str | None = None  # Hub dataset configuration
    split: str = "train"
    data_files: str | list[str] | None = None


@dataclass
class SFTDataArguments:
    """Which data the cold start trains on, and how the CPU is used."""

    datasets: list[SFTDatasetSpec] = field(
        default_factory=list,
        metadata={"help": "Datasets to mix: a list of {path, weight, name, split, data_files} (YAML)."},
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "One dataset (folder, file or Hub id): a shortcut for `datasets`."}
    )
    mix_seed: int = field(default=0, metadata={"help": "Seed of the mixture's sampling and shuffling."})
    num_threads: int | None = field(
        default=None, metadata={"help": "CPU torch threads (default: min(2, CPUs)); ignored on GPU."}
    )
    low_precision_parameters: bool = low_precision_field()
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Stop training after this many minutes (then save as usual): a time budget for CPU "
            "demos. Pair it with a constant learning rate, which needs no known end."
        },
    )

    def __post_init__(self) -> None:
        specs = []
        for i, d in enumerate(self.datasets):
            if isinstance(d, dict):
                unknown = set(d) - {f.name for f in dataclasses.fields(SFTDatasetSpec)}
                if unknown:
                    raise SFTInputError(f"datasets[{i}]: unknown key {sorted(unknown)[0]!r}")
                if "path" not in d:
                    raise SFTInputError(f"datasets[{i}]: missing key 'path'")
                d = SFTDatasetSpec(**d)
            if not isinstance(d, SFTDatasetSpec):
                raise SFTInputError(
                    f"datasets[{i}]: expected a mapping with 'path' (and 'weight'), got {d!r}"
                )
            if not isinstance(d.weight, int | float) or isinstance(d.weight, bool) or d.weight <= 0:
                raise SFTInputError(
                    f"datasets[{i}] ({d.path}): weight must be a number > 0, got {d.weight!r}"
                )
            specs.append(d)
        self.datasets = specs
        if self.dataset_path:
            self.datasets = [SFTDatasetSpec(path=self.dataset_path)]
        if self.num_threads is not None and self.num_threads < 1:
            raise SFTInputError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.max_train_minutes is not None and not self.max_train_minutes > 0:
            raise SFTInputError(f"max_train_minutes must be > 0, got {self.max_train_minutes}")


SFT_DATACLASSES = (SFTConfig, SFTDataArguments, ModelConfig)
# `trl sft`'s ScriptArguments keys, which this command spells differently: key -> what to use here
_DATASETS_HINT = (
    "the data comes from `datasets:` (a list of {path, weight}, mixed by weight) or --dataset_path "
    "PATH|HUB_ID (one dataset)"
)
TRL_KEYS = {
    "dataset_name": _DATASETS_HINT,
    "dataset_config": _DATASETS_HINT + "; a Hub configuration is `name:` in a `datasets:` entry",
    "dataset_train_split": _DATASETS_HINT + "; the split is `split:` in a `datasets:` entry",
    "dataset_mixture": _DATASETS_HINT,
}


def _check_yaml_keys(path: str) -> None:
    """Unknown keys fail here, naming the key (argparse would take YAML values unchecked)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SFTInputError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise SFTInputError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SFTInputError(f"{path}: must hold a mapping of key: value")
    known = {f.name for cls in SFT_DATACLASSES for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key == "env" and isinstance(data[key], dict):
            continue  # TrlParser's environment-variable block
        if key in TRL_KEYS:
            raise SFTInputError(f"{path}: unknown key {key!r}: {TRL_KEYS[key]}")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SFTInputError(f"{path}: unknown key {key!r}{hint}")


def parse_sft_config(argv: list[str]) -> tuple[SFTConfig, SFTDataArguments, ModelConfig]:
    """`--config FILE` plus `--key value` overrides -> (SFTConfig, SFTDataArguments, ModelConfig)."""
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SFTInputError("--config needs a file path")
        _check_yaml_keys(argv[i + 1])
    try:
        check_known_arguments(argv, SFT_DATACLASSES, TRL_KEYS)
    except ConfigError as err:
        raise SFTInputError(str(err)) from None
    parser = TrlParser(SFT_DATACLASSES)
    try:
        train, data, model = parser.parse_args_and_config(argv)
    except SystemExit as err:  # argparse already printed which argument is wrong
        raise SFTInputError(f"invalid command-line or config value (see above): exit {err.code}") from err
    except SFTInputError:
        raise
    except (ValueError, TypeError) as err:
        raise SFTInputError(str(err)) from err
    if not model.model_name_or_path:
        raise SFTInputError("model_name_or_path is not set")
    if not data.datasets:
        raise SFTInputError("no data: set `datasets` (a list of {path, weight}) or `dataset_path`")
    try:
        check_report_to(train.report_to)
        check_training_precision(train, model, data.low_precision_parameters)
    except ConfigError as err:
        raise SFTInputError(str(err)) from err
    try:
        check_push_settings(train)
    except HubError as err:
        raise SFTInputError(str(err)) from None
    return train, data, model


def check_arguments(argv: list[str]) -> None:
    """`parse_sft_config`'s checks as a ConfigError: what a relaunch under accelerate checks once."""
    try:
        parse_sft_config(argv)
    except SFTInputError as err:
        raise ConfigError(str(err)) from None


# ---- data ------------------------------------------------------------------------------------------------
def _resolve_local(spec: SFTDatasetSpec) -> tuple[str, dict[str, Any]] | None:
    """load_dataset arguments for a local folder or file; None for a Hub id."""
    p = Path(spec.path).expanduser()
    if p.is_dir():
        if spec.data_files is not None:
            return str(p), {"data_files": spec.data_files}
        for name in DATA_FILE_NAMES:
            if (p / name).is_file():
                kind = "parquet" if name.endswith(".parquet") else "json"
                return kind, {"data_files": str(p / name)}
        return str(p), {}
    if p.is_file():
        kind = "parquet" if p.suffix == ".parquet" else "json"
        return kind, {"data_files": str(p)}
    if spec.path.startswith((".", "/", "~")) or spec.path.count("/") > 1:
        raise SFTInputError(f"dataset {spec.path}: no such file or directory")
    return None


def load_one(spec: SFTDatasetSpec):
    """One dataset's `messages` column, checked."""
    from datasets import load_dataset

    local = _resolve_local(spec)
    try:
        if local is None:
            ds = load_dataset(spec.path, name=spec.name, split=spec.split, data_files=spec.data_files)
        else:
            path, kwargs = local
            ds = load_dataset(path, name=spec.name, split=spec.split, **kwargs)
    except Exception as err:  # offline hub misses, bad files: say which dataset
        raise SFTInputError(f"dataset {spec.path}: could not be loaded: {type(err).__name__}: {err}") from err
    if "messages" not in ds.column_names:
        raise SFTInputError(
            f"dataset {spec.path}: no 'messages' column (columns: {', '.join(ds.column_names)}); "
            "the builders of `gcd-trl data` write chat conversations in 'messages'"
        )
    if len(ds) == 0:
        raise SFTInputError(f"dataset {spec.path}: has no rows")
    return ds.select_columns(["messages"])


def weighted_indices(n: int, weight: float, rng: random.Random) -> list[int]:
    """round(weight x n) row indices: every row floor(weight) times, plus a sample for the fraction."""
    total = round(weight * n)
    whole, rest = divmod(total, n)
    return [i for _ in range(whole) for i in range(n)] + sorted(rng.sample(range(n), rest))


def build_mixture(data_args: SFTDataArguments):
    """The training dataset: each dataset's rows by weight, concatenated, shuffled. Also a summary."""
    from datasets import concatenate_datasets

    rng = random.Random(f"sft_mix:{data_args.mix_seed}")
    parts, summary = [], []
    for spec in data_args.datasets:
        ds = load_one(spec)
        idx = weighted_indices(len(ds), spec.weight, rng)
        if not idx:
            raise SFTInputError(f"dataset {spec.path}: weight {spec.weight} leaves no rows of {len(ds)}")
        parts.append(ds.select(idx))
        summary.append({"path": spec.path, "weight": spec.weight, "rows": len(ds), "used": len(idx)})
    mixed = concatenate_datasets(parts).shuffle(seed=data_args.mix_seed)
    return mixed, summary


def describe_mixture(summary: list[dict[str, Any]]) -> str:
    """The data as the model card names it: "path (weight w, n rows)", joined."""
    return ", ".join(f"{s['path']} (weight {s['weight']}, {s['used']} rows)" for s in summary)


# ---- training --------------------------------------------------------------------------------------------
def set_threads(train_args: SFTConfig, data_args: SFTDataArguments) -> None:
    import torch

    if train_args.use_cpu or not torch.cuda.is_available():
        torch.set_num_threads(data_args.num_threads or max(1, min(2, os.cpu_count() or 1)))


def check_model_path(name: str) -> None:
    """`config.check_model_path`, as an SFT input error."""
    from gcd_trl.config import check_model_path as check

    try:
        check(name)
    except ConfigError as err:
        raise SFTInputError(str(err)) from None


def build_trainer(train_args: SFTConfig, data_args: SFTDataArguments, model_args: ModelConfig):
    """The SFTTrainer for a parsed config, and the mixture summary (loads data and model)."""
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    check_model_path(model_args.model_name_or_path)
    dataset, mixture = build_mixture(data_args)
    set_threads(train_args, data_args)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        model_init_kwargs["quantization_config"] = quantization
    model_init_kwargs.update(train_args.model_init_kwargs or {})
    train_args.model_init_kwargs = model_init_kwargs
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=train_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
        callbacks=[TimeBudget(data_args.max_train_minutes)] if data_args.max_train_minutes else None,
    )
    trainer.card_example = first_user_message(dataset)  # the card's quick start (the data is tokenized now)
    return trainer, mixture


def first_user_message(dataset) -> str | None:
    """The first user message of the mixture: a prompt of the kind the model learns to answer."""
    for message in dataset[0]["messages"] if len(dataset) else []:
        if message.get("role") == "user":
            return str(message.get("content"))
    return None


def resolved_sft_config(train_args: SFTConfig, data_args: SFTDataArguments, model_args: ModelConfig) -> dict:
    """The values an SFT run used, by section (the card's YAML). The token lives in the environment only."""
    trainer = train_args.to_dict()
    trainer.pop("hub_token", None)
    return {
        "trainer": dict(sorted(trainer.items())),
        "data": dataclasses.asdict(data_args),
        "model": dataclasses.asdict(model_args),
    }


class TimeBudget(TrainerCallback):
    """Ends training once `minutes` have passed since it began (checked after each optimizer step)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60.0
        self.start: float | None = None
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None and time.monotonic() - self.start >= self.seconds:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control


def run_sft(train_args: SFTConfig, data_args: SFTDataArguments, model_args: ModelConfig) -> dict[str, Any]:
    """Train, save the model (and tokenizer) with run_config.yaml and a card naming the data; push the
    allow-list (`hub.push_folder`) when asked."""
    config = resolved_sft_config(train_args, data_args, model_args)
    push = train_args.push_to_hub
    train_args.push_to_hub = False  # Trainer would upload output_dir at every save
    trainer, mixture = build_trainer(train_args, data_args, model_args)
    data_name = describe_mixture(mixture)
    main = trainer.accelerator.is_main_process
    if main:
        print(f"sft: {len(trainer.train_dataset)} rows from {data_name}", file=sys.stderr)
    result = trainer.train(resume_from_checkpoint=_resume_arg(train_args.resume_from_checkpoint))
    trainer.save_model(train_args.output_dir)
    trainer.save_state()  # trainer_state.json with the whole run's log (a checkpoint's stops at its step)
    out = Path(train_args.output_dir)
    if main:
        repo_id = train_args.hub_model_id or f"{check_hub() if push else 'YOUR_NAME'}/{out.resolve().name}"
        write_run_config(out, config)
        card = sft_card(
            config,
            model_name=repo_id.split("/")[-1],
            repo_id=repo_id,
            mixture=mixture,
            example=trainer.card_example,
        )
        (out / "README.md").write_text(card)
        if push:
            url = push_folder(out, repo_id, private=train_args.hub_private_repo)
            print(f"sft: pushed to {url}", file=sys.stderr)
    budget = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TimeBudget)), None)
    return {
        "output_dir": train_args.output_dir,
        "stopped_by_time_budget": bool(budget and budget.stopped_at_step is not None),
        "rows": len(trainer.train_dataset),
        "datasets": mixture,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
        "train_loss": round(result.metrics.get("train_loss", float("nan")), 4),
        "global_steps": result.global_step,
    }


def _resume_arg(value):
    if isinstance(value, str) and value.lower() in ("true", "last"):
        return True
    return value or None
