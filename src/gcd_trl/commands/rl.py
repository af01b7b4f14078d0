"""`gcd-trl rl [--config FILE] [--key value ...]`: train an agent with GRPO / GiGPO / RLVMR (and GCD).

`gcd-trl rl -h` lists every config field with its help and default, as `trl grpo -h` does. Launching:
`gcd-trl rl --config FILE --accelerate_config zero2 --num_processes 8` relaunches through accelerate
(or: `accelerate launch --config_file configs/accelerate/X.yaml -m gcd_trl rl --config FILE`).
Everything that can be checked without a model is checked first (config, report_to packages, tasks,
prompt template, model path), so a bad input fails in seconds with a message naming it. Files written
before training (generated games) are written once, by the main process first, the others waiting.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gcd_trl.commands._common import (
    CommandError,
    add_trl_command,
    check_report_to,
    is_main_process,
    print_once,
    trl_prelude,
)

DESCRIPTION = (
    "Train with AgentGRPOTrainer (TRL's GRPOTrainer over env transitions). Every field below can be set in "
    "the --config YAML file or as --key value (the command line wins)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_trl_command(
        sub,
        "rl",
        help="Train an agent with RL on ALFWorld or ScienceWorld.",
        description=DESCRIPTION,
        config_help="Run config (YAML), e.g. configs/rl/tiny_alfworld_grpo.yaml. Optional when the required "
        "values (model_name_or_path, ...) are given on the command line.",
    )
    p.set_defaults(func=run)


def rl_dataclasses() -> tuple:
    from gcd_trl.config import RL_DATACLASSES

    return RL_DATACLASSES


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
        if env_args.generate_games:
            prepare_games(env_args, data_dir)
    try:
        tasks = split_tasks(env_args.environment, env_args.split, env_args.part, data_dir)
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"tasks: {err}") from err
    if env_args.max_receptacles is not None and not env_args.generate_games:
        from gcd_trl.envs.alfworld_gen import game_max_receptacles

        sizes = {game_max_receptacles(t.game) for t in tasks[:1]}  # a split holds one room size
        if sizes != {env_args.max_receptacles}:
            size = sizes.pop()
            raise InputError(
                f"max_receptacles: {env_args.max_receptacles}, but the games under {data_dir} have "
                + ("full rooms" if size is None else f"rooms of {size} receptacles")
                + ": point data_dir at games of that size, or unset max_receptacles"
            )
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


def prepare_games(env_args, data_dir: Path) -> None:
    """`generate_games` games into data_dir, written once: by the main process first while the other ranks
    wait (when a process group exists), under a file lock (so concurrent runs on one folder do not race).
    A folder holding other games is refused; a folder holding exactly these games is used as it is."""
    from gcd_trl.envs.alfworld_gen import GamesFolderError, generate_games

    types = tuple(env_args.task_types or range(1, 7))
    n, seed = env_args.generate_games, env_args.generate_seed
    stats: dict = {}
    with _main_process_first(), _folder_lock(data_dir):
        try:
            generate_games(
                data_dir,
                n,
                seed,
                task_types=types,
                stats=stats,
                progress=is_main_process(),
                max_receptacles=env_args.max_receptacles,
            )
        except GamesFolderError as err:
            raise InputError(
                f"data_dir: {err}. To train on the games that are there, set generate_games: 0; to generate "
                "new ones, point data_dir at an empty folder"
            ) from None
        except (ValueError, RuntimeError) as err:
            raise InputError(f"generate_games: {err}") from None
    what = "found" if stats.get("reused") else "generated"
    print_once(f"gcd-trl rl: data_dir {data_dir}: {n} ALFWorld games {what} (generate_seed {seed})")


def _main_process_first():
    """accelerate's main_process_first when a process group is up (rl: TrainingArguments starts it), else
    nothing (the file lock still keeps writers apart)."""
    import contextlib

    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        return PartialState().main_process_first()
    return contextlib.nullcontext()


def _folder_lock(folder: Path):
    """An exclusive lock on a file beside `folder` for the duration of the block."""
    import contextlib
    import fcntl

    @contextlib.contextmanager
    def lock():
        folder.parent.mkdir(parents=True, exist_ok=True)
        path = folder.parent / f".{folder.name}.lock"
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return lock()


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
    from gcd_trl.config import ConfigError, check_parameter_precision, parse_rl_config
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
        check_report_to(train.report_to)
    except CommandError as err:
        raise InputError(str(err)) from err
    try:
        load_template(
            env.prompt_template or default_agent_template(env.environment, bool(env.meta_reasoning)), "agent"
        )
    except TemplateError as err:
        raise InputError(f"prompt_template: {err}") from err
    _check_model_path(model_args.model_name_or_path)
    try:
        check_parameter_precision(
            (train.model_init_kwargs or {}).get("dtype", model_args.dtype),
            train,
            model_args.model_name_or_path,
            use_peft=bool(model_args.use_peft),
            allowed=train.low_precision_parameters,
        )
    except ConfigError as err:
        raise InputError(str(err)) from err
    from gcd_trl.checkpoints import resolve_resume

    try:  # which checkpoint, decided now: an incomplete newest one falls back to the previous one
        train.resume_from_checkpoint = resolve_resume(train.resume_from_checkpoint, train.output_dir)
    except ValueError as err:
        raise InputError(str(err)) from err
    tasks = build_tasks(env)
    if env.eval_split:
        build_eval_tasks(env)  # a missing or empty eval split fails now, not after the model loads
    print_once(
        f"gcd-trl rl: {len(tasks)} {env.environment} tasks (split {env.split}, part {env.part}"
        + (f", from {env.resolved_data_dir()}" if env.environment == "alfworld" else "")
        + f"), {train.tasks_per_round} per round on {train.world_size} process(es)"
    )
    per_process = train.tasks_per_round // train.world_size
    if len(tasks) < per_process:
        print_once(
            f"note: {len(tasks)} tasks < {per_process} tasks per round per process: tasks repeat within a round"
        )
    return train, env, gcd, model_args, tasks


def build_eval_tasks(env_args) -> list:
    """The held-out tasks of `eval_split` (the trainer's eval_steps hook), or [] when none is set."""
    if not env_args.eval_split:
        return []
    import dataclasses

    held_out = dataclasses.replace(
        env_args,
        split=env_args.eval_split,
        part=env_args.eval_part,
        data_dir=env_args.eval_data_dir or env_args.data_dir,
        max_tasks=env_args.eval_max_tasks,
        generate_games=0,
        eval_split=None,
    )
    return build_tasks(held_out)


def build_trainer(train_args, env_args, gcd_args, model_args, tasks):
    """The AgentGRPOTrainer for a prepared config (model loading happens here)."""
    import torch
    from datasets import Dataset
    from trl import get_peft_config, get_quantization_config

    from gcd_trl.ppo import trainer_class  # AgentGRPOTrainer; PPO (gae); NTHR / value head: token-level

    if train_args.use_cpu or not torch.cuda.is_available():
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() else max(1, min(2, os.cpu_count() or 1)))
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
    eval_tasks = build_eval_tasks(env_args)
    return trainer_class(train_args)(
        model_args.model_name_or_path,
        args=train_args,
        train_dataset=dataset,
        eval_dataset=Dataset.from_list([t.to_dict() for t in eval_tasks]) if eval_tasks else None,
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
        trainer.save_state()  # trainer_state.json: the logged curves (the demo report plots them)
        trainer.create_model_card(model_name=Path(train_args.output_dir).name)
        if train_args.push_to_hub:
            trainer.push_to_hub()  # the card names the env and split; they are not Hub datasets
    finally:
        trainer.close()
        end_trackers(trainer)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # vLLM colocate leaves one behind


def end_trackers(trainer) -> None:
    """Finish the experiment trackers, as `Trainer.end()` does (accelerate's trackers), plus a wandb run that
    transformers leaves open after training, so the run is marked finished, not crashed."""
    try:
        trainer.accelerator.end_training()
    except Exception as err:  # a tracker that fails to close must not hide the run's own outcome
        print_once(f"gcd-trl rl: closing the trackers failed: {err}")
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None and is_main_process():
        wandb.finish()


def run(args: argparse.Namespace, rest: list[str]) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = trl_prelude(args, rest, "rl", rl_dataclasses, DESCRIPTION)
    if isinstance(argv, int):  # -h, or the launched processes' exit code
        return argv
    try:
        parts = prepare(argv)
    except InputError as err:
        print_once(f"gcd-trl rl: {err}")  # every rank finds the same problem: say it once
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
