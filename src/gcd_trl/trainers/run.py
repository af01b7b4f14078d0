"""An RL run from its config: check everything that needs no model, build the trainer the config asks for,
train, save. `gcd-trl rl` is `prepare` then `train`.

    train_args, env_args, gcd_args, model_args, tasks = prepare(["--config", "configs/rl/FILE.yaml"])
    train(train_args, env_args, gcd_args, model_args, tasks)

`prepare` fails in seconds with a `ConfigError` naming the problem (a missing model, config keys and
types, an output_dir that cannot be written, report_to packages, the prompt template, the model path, the
Hub when pushing, parameter precision, the checkpoint to resume, the tasks);
files written before training (generated games) are written once, by the main process first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gcd_trl.config import (
    ConfigError,
    check_model_given,
    check_model_path,
    check_report_to,
    check_training_precision,
    check_writable_dir,
)
from gcd_trl.dist import is_main_process, print_once
from gcd_trl.hub import HubError, check_hub, check_push_settings, push_folder
from gcd_trl.rollout.settings import build_eval_tasks, build_tasks

LOG = "gcd-trl rl"


def trainer_class(args) -> type:
    """The trainer a run config asks for: PPO for gae; the token-level trainer for NTHR or the value head;
    else AgentGRPOTrainer."""
    if args.advantage_estimator == "gae":
        from gcd_trl.trainers.ppo import AgentPPOTrainer

        return AgentPPOTrainer
    if getattr(args, "nthr", False) or getattr(args, "value_head_coef", 0.0) > 0:
        from gcd_trl.trainers.token import AgentTokenTrainer

        return AgentTokenTrainer
    from gcd_trl.trainers.grpo import AgentGRPOTrainer

    return AgentGRPOTrainer


def check_before_model(train, env, model_args) -> None:
    """The checks of parsed arguments that read no model and write nothing (`gcd-trl rl` and `gcd-trl config
    check` make them alike): output_dir writable, the hub token, report_to packages, the prompt template, the
    model path, parameter precision, and the checkpoint to resume (`train.resume_from_checkpoint` becomes
    the folder). Raises ConfigError naming the key."""
    from gcd_trl.trainers.checkpoints import resolve_resume

    check_writable_dir("output_dir", train.output_dir)  # not after the model loads and a round has run
    check_report_to(train.report_to)
    env.load_template()
    check_model_path(model_args.model_name_or_path)
    try:
        check_push_settings(train)
    except HubError as err:
        raise ConfigError(str(err)) from None
    check_training_precision(train, model_args, train.low_precision_parameters)
    try:  # which checkpoint, decided now: an incomplete newest one falls back to the previous one
        train.resume_from_checkpoint = resolve_resume(train.resume_from_checkpoint, train.output_dir)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_arguments(argv: list[str]) -> None:
    """`prepare`'s checks up to listing the tasks: what a relaunch under accelerate checks once, before
    starting the processes."""
    from gcd_trl.trainers.grpo_config import parse_rl_config

    check_model_given(argv)
    train, env, _, model_args = parse_rl_config(argv)
    check_before_model(train, env, model_args)


def prepare(argv: list[str]):
    """Parse and check everything that needs no model. Returns (train, env, gcd, model_args, tasks)."""
    check_model_given(argv)  # before TRL is imported: `gcd-trl rl` alone fails in a second
    from gcd_trl.trainers.grpo_config import parse_rl_config

    train, env, gcd, model_args = parse_rl_config(argv)
    check_before_model(train, env, model_args)
    tasks = build_tasks(env, LOG)
    if env.eval_split:
        build_eval_tasks(env)  # a missing or empty eval split fails now, not after the model loads
    print_once(
        f"{LOG}: {len(tasks)} {env.environment} tasks (split {env.split}, part {env.part}"
        + (f", from {env.resolved_data_dir()}" if env.environment == "alfworld" else "")
        + f"), {train.tasks_per_round} per round on {train.world_size} process(es)"
    )
    per_process = train.tasks_per_round // train.world_size
    if len(tasks) < per_process:
        print_once(
            f"note: {len(tasks)} tasks < {per_process} tasks per round per process: tasks repeat within a round"
        )
    return train, env, gcd, model_args, tasks


def set_torch_threads(use_cpu: bool) -> None:
    """CPU: OMP_NUM_THREADS torch threads, else min(2, CPUs) (the env workers need the other cores). GPU:
    cuDNN's fused attention off: it returns NaN for the fully masked rows of left-padded prompts in bf16,
    and its backward turns them into NaN gradients (seen on an H100, torch 2.11); the other SDPA kernels
    handle those rows."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() else max(1, min(2, os.cpu_count() or 1)))
    else:
        torch.backends.cuda.enable_cudnn_sdp(False)


def build_trainer(train_args, env_args, gcd_args, model_args, tasks):
    """The trainer for a prepared config (`trainer_class`; the model loads here)."""
    from datasets import Dataset
    from trl import get_peft_config, get_quantization_config

    set_torch_threads(train_args.use_cpu)
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
    """Build the trainer, run it, save the model, its card and run_config.yaml; push them when asked
    (`hub.push_folder`: the allow-list, not Trainer.push_to_hub's whole folder)."""
    import torch

    from gcd_trl.trainers.card import write_run_config
    from gcd_trl.trainers.grpo_config import resolved_dict

    if is_main_process():
        write_run_config(
            train_args.output_dir, resolved_dict(train_args, env_args, gcd_args, model_args, full=True)
        )
    push = train_args.push_to_hub
    train_args.push_to_hub = False  # Trainer would upload output_dir at every save, rollouts and all
    trainer = build_trainer(train_args, env_args, gcd_args, model_args, tasks)
    try:
        if push and is_main_process():  # the card (main process only) names the repo in its quick start
            trainer.card_repo_id = (
                train_args.hub_model_id or f"{check_hub()}/{Path(train_args.output_dir).name}"
            )
        trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
        trainer.save_model(train_args.output_dir)
        trainer.save_state()  # trainer_state.json: the logged curves (the demo report plots them)
        trainer.create_model_card()
        if push and is_main_process():
            gather_rules(gcd_args, train_args.output_dir)
            url = push_folder(
                train_args.output_dir,
                trainer.card_repo_id,
                push_rollouts=train_args.push_rollouts,
                private=train_args.hub_private_repo,
            )
            print(f"{LOG}: pushed to {url}", flush=True)
    finally:
        trainer.close()
        end_trackers(trainer)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # vLLM colocate leaves one behind


def gather_rules(gcd_args, output_dir) -> None:
    """Golden rules kept elsewhere (`rules_file`) are copied to output_dir/golden_rules.json, the name the
    upload takes them by."""
    import shutil

    source = getattr(gcd_args, "rules_file", None)
    target = Path(output_dir) / "golden_rules.json"
    if source and Path(source).is_file() and Path(source).resolve() != target.resolve():
        shutil.copyfile(source, target)


def end_trackers(trainer) -> None:
    """Finish the experiment trackers, as `Trainer.end()` does (accelerate's trackers), plus a wandb run that
    transformers leaves open after training, so the run is marked finished, not crashed."""
    try:
        trainer.accelerator.end_training()
    except Exception as err:  # a tracker that fails to close must not hide the run's own outcome
        print_once(f"{LOG}: closing the trackers failed: {err}")
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None and is_main_process():
        wandb.finish()
