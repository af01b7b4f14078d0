"""The model card of an RL run: TRL's card (which this project's paper is credited in), plus the agent RL
settings a reader needs to reproduce the run."""

from __future__ import annotations

from typing import Any

# the model card credits the paper this project implements (TRL's GRPOTrainer names DeepSeekMath)
PAPER = {
    "title": "Rethinking Reward Miscalibration of GRPO in Agentic RL",
    "citation": "@misc{liu_gcd,\n"
    "    title  = {{Rethinking Reward Miscalibration of GRPO in Agentic RL}},\n"
    "    author = {Jingyu Liu and Xiaopeng Wu and Jingquan Peng and Kehan Chen and Chuan Yu and "
    "Lizhong Ding and Yong Liu},\n"
    "}",
}


def card_section(args: Any, env_args: Any, gcd_args: Any, num_tasks: int) -> str:
    """The card's "Agent RL settings" section: estimator, environment, round geometry, GCD."""
    a, e = args, env_args
    lines = [
        "",
        "## Agent RL settings (gcd-trl)",
        "",
        f"- advantage estimator: `{a.advantage_estimator}`"
        + (f" (grpo_level={a.grpo_level})" if a.advantage_estimator == "grpo" else "")
        + (
            f" (gamma={a.gamma}, omega={a.omega}, step_adv_norm={a.step_adv_norm})"
            if a.advantage_estimator == "gigpo"
            else ""
        ),
        f"- environment: `{e.environment}`, split `{e.split}` ({e.part}), {num_tasks} tasks, "
        f"{e.max_episode_steps} steps per episode, "
        f"history {'the template default' if e.history_length is None else e.history_length}",
        f"- round: {a.tasks_per_round} tasks x G={a.num_generations}, loss_type `{a.loss_type}`, "
        f"beta={a.beta}, num_iterations={a.num_iterations}, invalid_penalty={a.invalid_penalty}",
    ]
    g = gcd_args
    if g is not None:
        lines.append(
            f"- GCD: {'on' if g.gcd else 'off'}"
            + (
                f" (gcd_coef={g.gcd_coef}, judge_labels={g.judge_labels}, correction={g.correction})"
                if g.gcd
                else ""
            )
        )
    return "\n".join(lines) + "\n"
