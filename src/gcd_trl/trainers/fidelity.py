"""How a run config compares with the reference baselines (verl-agent's and RLVMR's scripts): the settings
that decide whether a run reproduces them, resolved (defaults and template defaults filled in), and every
one that departs from the references (docs/fidelity.md gives the reasons). `gcd-trl config check` prints
it as the `fidelity` block.
"""

from __future__ import annotations

from typing import Any

from gcd_trl.config import ConfigError
from gcd_trl.prompts import TemplateError
from gcd_trl.rollout.collector import resolve_history

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


def fidelity_summary(train: Any, env: Any) -> dict[str, Any]:
    """The reference-relevant settings of a parsed run, resolved, with what differs from the references."""
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
