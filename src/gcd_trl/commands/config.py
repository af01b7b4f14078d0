"""`gcd-trl config check FILE`: validate a run config and print the values the run will use.

After the resolved values comes a `fidelity` block: the settings that decide whether a run reproduces the
reference baselines (verl-agent's and RLVMR's scripts), each resolved (defaults and template defaults
filled in), and `differs_from_reference` listing every one that departs from the references (see
docs/fidelity.md for the reasons).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# What verl-agent's / RLVMR's example scripts and configs use (docs/fidelity.md gives file and line):
# examples/{grpo,gigpo,rlvmr}_trainer/run_{alfworld,sciworld}.sh, verl/trainer/config/ppo_trainer.yaml,
# agent_system/environments/env_package/*/{envs,projection}.py.
REFERENCE: dict[str, Any] = {
    "success_reward": 10.0,
    "invalid_penalty": 0.1,
    "inadmissible_action": "env",
    "invalid_feedback": "env",
    "ppo_mini_batch_size": 256,
    "entropy_coef": 0.001,
    "beta": 0.01,
    "learning_rate": 1e-6,
    "epsilon": 0.2,
    "num_iterations": 1,
    "max_grad_norm": 1.0,
    "temperature": 1.0,
    "tasks_per_round": 16,
    "num_generations": 8,
    "max_episode_steps": 30,
    "gamma": 0.95,
    "omega": 1.0,
    "step_adv_norm": "mean_std",
    "gigpo_step_reward": "success",
    "reflection_at_first_step": True,
}
# Apply to one estimator only.
ESTIMATOR_ONLY = {
    "gamma": "gigpo",
    "gigpo_step_reward": "gigpo",
    "reflection_at_first_step": "rlvmr",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="Validate run configs.")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = csub.add_parser(
        "check",
        help="Validate FILE and print the resolved values.",
        description="Validate a run config (unknown keys, types, combinations: the checks `gcd-trl rl` makes "
        "before loading anything) and print the values the run will use, then its `fidelity` block.",
    )
    check.add_argument("file", help="A run config (YAML), e.g. configs/rl/tiny_alfworld_grpo.yaml")
    check.add_argument(
        "--all", action="store_true", help="Print every trainer field, not just the main ones."
    )
    check.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="--key value overrides, as for `gcd-trl rl`."
    )
    check.set_defaults(func=run_check)


def read_config_file(path: str) -> dict[str, Any]:
    """The YAML mapping in `path`, read before anything heavy is imported (a missing or broken file is
    reported in well under a second; the dataclass checks need TRL, and so torch)."""
    import yaml

    from gcd_trl.commands._common import CommandError

    file = Path(path)
    if not file.is_file():
        raise CommandError(
            f"config file not found: {path}" + (" (it is a directory)" if file.is_dir() else "")
        )
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CommandError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise CommandError(f"{path}: must hold a mapping of key: value, not {type(data).__name__}")
    return data or {}


def run_check(args: argparse.Namespace) -> int:
    import yaml

    from gcd_trl.commands._common import CommandError

    try:
        read_config_file(args.file)
    except CommandError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from gcd_trl.config import ConfigError, check_yaml
    from gcd_trl.trainers.grpo_config import RL_DATACLASSES, parse_rl_config, resolved_dict

    overrides = list(args.overrides)
    note = ""
    if not _has_gpu():
        # GPU recipes still get every other check on a laptop.
        overrides += ["--bf16", "false", "--use_vllm", "false"]
        note = " (no GPU here: checked with bf16=false, use_vllm=false)"
    try:
        explicit = set(check_yaml(args.file, RL_DATACLASSES))
        parts = parse_rl_config(["--config", args.file, *overrides])
        fidelity = fidelity_summary(parts[0], parts[1])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(f"# {args.file}: OK{note}")
    print(yaml.safe_dump(resolved_dict(*parts, full=args.all, explicit=explicit), sort_keys=False), end="")
    print(yaml.safe_dump({"fidelity": fidelity}, sort_keys=False, width=110), end="")
    return 0


def fidelity_summary(train: Any, env: Any) -> dict[str, Any]:
    """The reference-relevant settings of a parsed run, resolved, with what differs from the references."""
    from gcd_trl.config import ConfigError
    from gcd_trl.prompts import TemplateError
    from gcd_trl.rollout.collector import resolve_history

    estimator = train.advantage_estimator
    template = env.template_name()
    try:
        history = resolve_history(env, template)
    except TemplateError as err:
        raise ConfigError(f"prompt_template: {err}") from err
    values = {
        "success_reward": train.success_reward,
        "invalid_penalty": train.invalid_penalty,
        "inadmissible_action": env.inadmissible_action,
        "invalid_feedback": env.invalid_feedback,
        "ppo_mini_batch_size": train.ppo_mini_batch_size,
        "entropy_coef": train.entropy_coef,
        "beta": train.beta,
        "learning_rate": train.learning_rate,
        "epsilon": train.epsilon,
        "num_iterations": train.num_iterations,
        "max_grad_norm": train.max_grad_norm,
        "temperature": train.temperature,
        "tasks_per_round": train.tasks_per_round,
        "num_generations": train.num_generations,
        "max_episode_steps": env.max_episode_steps,
        "gamma": train.gamma,
        "omega": train.omega,
        "step_adv_norm": train.step_adv_norm,
        "gigpo_step_reward": train.gigpo_step_reward,
        "reflection_at_first_step": train.reflection_at_first_step,
    }
    relevant = {k: v for k, v in values.items() if ESTIMATOR_ONLY.get(k, estimator) == estimator}
    differs = {
        k: {"here": v, "reference": REFERENCE[k]} for k, v in relevant.items() if not _same(v, REFERENCE[k])
    }
    max_samples = train.tasks_per_round * train.num_generations * env.max_episode_steps
    mb = train.ppo_mini_batch_size
    out: dict[str, Any] = {
        "estimator": estimator,
        **relevant,
        "invalid_rule": (
            "format errors only (missing/doubled action tag, missing think or meta tag, Chinese "
            "characters); an inadmissible action is sent to the env, unpenalised"
            if env.inadmissible_action == "env"
            else "format errors and inadmissible actions (never sent to the env)"
        ),
        "mini_batches": (
            f"{mb} step samples per optimizer step: up to {-(-max_samples // mb)} optimizer steps per round "
            f"(a round holds up to {max_samples} step samples)"
            if mb
            else "the whole round is one optimizer step"
        ),
        "kl": (
            f"beta={train.beta}, TRL's k3 estimator = verl's low_var_kl (verl also clamps it to [-10, 10])"
            if train.beta
            else "off"
        ),
        "prompt": {
            "template": template,
            "history_length": "all" if history.history_length < 0 else history.history_length,
            "older_actions": history.older_actions,
            "reasoning_history": history.reasoning_history,
        },
        "differs_from_reference": differs or "nothing",
    }
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float) and isinstance(a, int | float) and not isinstance(a, bool):
        return abs(a - b) <= 1e-12 * max(1.0, abs(b))
    return a == b


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
