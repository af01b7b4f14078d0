"""`gcd-trl rl --config FILE [--key value ...]`: train an agent with GRPO / GiGPO / RLVMR.

Also runs under accelerate:
`accelerate launch --config_file configs/accelerate/X.yaml -m gcd_trl rl --config FILE`.
Everything that can be checked without a model is checked first (config, tasks, prompt template, model
path), so a bad input fails in seconds with a message naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rl",
        help="Train an agent with RL on ALFWorld or ScienceWorld.",
        description="Train with AgentGRPOTrainer. Any config key can be overridden as --key value.",
    )
    p.add_argument(
        "--config", required=True, help="Run config (YAML), e.g. configs/rl/tiny_alfworld_grpo.yaml"
    )
    p.set_defaults(func=run, accepts_extra=True)


class InputError(ValueError):
    """A bad input found before training starts."""


def build_tasks(env_args) -> list:
    """The training tasks named by the env arguments (generating ALFWorld games first when asked)."""
    from gcd_trl.config import ConfigError
    from gcd_trl.envs.splits import split_tasks

    data_dir = None
    if env_args.environment == "alfworld":
        try:
            data_dir = env_args.resolved_data_dir()
        except ConfigError as err:
            raise InputError(str(err)) from err
        if env_args.generate_games and not (data_dir.is_dir() and any(data_dir.rglob("game.tw-pddl"))):
            from gcd_trl.envs.alfworld_gen import generate_games

            types = tuple(env_args.task_types or range(1, 7))
            print(f"generating {env_args.generate_games} ALFWorld games into {data_dir} ...", file=sys.stderr)
            generate_games(data_dir, env_args.generate_games, env_args.generate_seed, task_types=types)
    try:
        tasks = split_tasks(env_args.environment, env_args.split, env_args.part, data_dir)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"tasks: {err}") from err
    if env_args.task_types:
        tasks = [t for t in tasks if t.task_type in env_args.task_types]
    if env_args.scienceworld_tasks:
        known = {t.task_name for t in tasks}
        unknown = sorted(set(env_args.scienceworld_tasks) - known)
        if unknown:
            raise InputError(
                f"scienceworld_tasks: {unknown[0]!r} is not a task of split {env_args.split} "
                f"({env_args.part}); "
                f"known: {', '.join(sorted(known))}"
            )
        tasks = [t for t in tasks if t.task_name in env_args.scienceworld_tasks]
    if env_args.max_tasks:
        tasks = _round_robin_by_name(tasks)[: env_args.max_tasks]
    if not tasks:
        raise InputError(
            f"no {env_args.environment} tasks in split={env_args.split} part={env_args.part} "
            f"with task_types={env_args.task_types} scienceworld_tasks={env_args.scienceworld_tasks}"
            + (f" under {data_dir}" if data_dir else "")
        )
    return tasks


def _check_model_path(name: str) -> None:
    """A local model directory must hold a saved model; a hub id must be cached when offline."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(
                f"model_name_or_path {name}: the directory has no config.json (not a saved model)"
            )
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(f"model_name_or_path {name}: no such directory")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise InputError(
                f"model_name_or_path {name}: not a directory, and not in the hub cache (HF_HUB_OFFLINE=1)"
            )


def prepare(argv: list[str]):
    """Parse and check everything that needs no model. Returns (train, env, gcd, model_args, tasks)."""
    from gcd_trl.config import ConfigError, parse_rl_config
    from gcd_trl.prompts import TemplateError, default_agent_template, load_template

    try:
        train, env, gcd, model_args = parse_rl_config(argv)
    except ConfigError as err:
        raise InputError(str(err)) from err
    if train.hub_token:
        raise InputError(
            "hub_token must not be written in a config or on the command line: export HF_TOKEN instead"
        )
    try:
        load_template(
            env.prompt_template or default_agent_template(env.environment, bool(env.meta_reasoning)), "agent"
        )
    except TemplateError as err:
        raise InputError(f"prompt_template: {err}") from err
    _check_model_path(model_args.model_name_or_path)
    from gcd_trl.checkpoints import resolve_resume

    try:  # which checkpoint, decided now: an incomplete newest one falls back to the previous one
        train.resume_from_checkpoint = resolve_resume(train.resume_from_checkpoint, train.output_dir)
    except ValueError as err:
        raise InputError(str(err)) from err
    tasks = build_tasks(env)
    per_process = train.tasks_per_round // train.world_size
    if len(tasks) < per_process:
        print(
            f"note: {len(tasks)} tasks < {per_process} tasks per round per process: "
            "tasks repeat within a round",
            file=sys.stderr,
        )
    return train, env, gcd, model_args, tasks


def build_trainer(train_args, env_args, gcd_args, model_args, tasks):
    """The AgentGRPOTrainer for a prepared config (model loading happens here)."""
    import torch
    from datasets import Dataset
    from trl import get_peft_config, get_quantization_config

    from gcd_trl.trainer import AgentGRPOTrainer

    if train_args.use_cpu or not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    else:
        # cuDNN's fused attention returns NaN for the fully masked rows of left-padded prompts in bf16,
        # and its backward turns them into NaN gradients (seen on an H100, torch 2.11): use the other
        # SDPA kernels, which handle those rows.
        torch.backends.cuda.enable_cudnn_sdp(False)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(train_args.model_init_kwargs or {})
    train_args.model_init_kwargs = model_init_kwargs
    dataset = Dataset.from_list([t.to_dict() for t in tasks])
    return AgentGRPOTrainer(
        model_args.model_name_or_path,
        args=train_args,
        train_dataset=dataset,
        env_args=env_args,
        gcd_args=gcd_args,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )


def train(train_args, env_args, gcd_args, model_args, tasks) -> None:
    """Build the trainer, run it, save the model and its card (and push them when asked)."""
    import torch

    trainer = build_trainer(train_args, env_args, gcd_args, model_args, tasks)
    try:
        trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
        trainer.save_model(train_args.output_dir)
        trainer.create_model_card(model_name=Path(train_args.output_dir).name)
        if train_args.push_to_hub:
            trainer.push_to_hub(dataset_name=f"{env_args.environment}-{env_args.split}")
    finally:
        trainer.close()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # vLLM colocate leaves one behind


def run(args: argparse.Namespace, rest: list[str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parts = prepare(["--config", args.config, *rest])
    except InputError as err:
        print(f"gcd-trl rl: {err}", file=sys.stderr)
        return 2
    train(*parts)
    return 0


def _round_robin_by_name(tasks: list) -> list:
    """Interleave tasks by ScienceWorld task name / ALFWorld task type, so `max_tasks` keeps every kind."""
    buckets: dict = {}
    for task in tasks:
        buckets.setdefault(task.task_name or task.task_type, []).append(task)
    out = []
    for i in range(max((len(b) for b in buckets.values()), default=0)):
        out.extend(b[i] for b in buckets.values() if i < len(b))
    return out
