"""Run configuration: one YAML file, parsed by TRL's `TrlParser` into four dataclasses.

- `AgentGRPOConfig` extends TRL's `GRPOConfig` with the round geometry and the advantage estimator.
- `EnvArguments` says which environment, split and prompt the agent plays.
- `GCDArguments` holds the settings of generative classification disentanglement (the judge task
  and prompt-based correction).
- `ModelConfig` is TRL's own (model path, LoRA).

Everything a user can get wrong is checked here, before a model or an environment is loaded: an unknown
key, a value of the wrong type and an impossible combination all raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import GRPOConfig, ModelConfig, TrlParser

from gcd_trl.advantages.common import ESTIMATORS, GRPO_FAMILY  # one source of the estimator names

GRPO_LEVELS = ("steps", "trajectories")
STEP_NORMS = ("mean_std", "mean")
GIGPO_STEP_REWARDS = ("success", "dense")
SPLITS = ("L0", "L1", "L2", "all")
PARTS = ("train", "test")
JUDGE_LABELS = ("rules", "external", "both")
JUDGE_VOTE_MODES = ("n", "repeat")
CORRECTION_SOURCES = ("auto", "external", "policy")


class ConfigError(ValueError):
    """A configuration problem, named by its key."""


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def _at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{name}={value!r} must be >= {low}")


@dataclass
class EnvArguments:
    """Which environment the agent plays, on which tasks, with which prompt."""

    environment: str = field(
        default="alfworld", metadata={"help": "alfworld | scienceworld (`env:` is TrlParser's env-var block)"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "ALFWorld games (json_2.1.1 layout). Default: $ALFWORLD_DATA/json_2.1.1."},
    )
    split: str = field(
        default="L0", metadata={"help": "Benchmark level L0 | L1 | L2, or `all` (every game in data_dir)."}
    )
    part: str = field(default="train", metadata={"help": "train | test part of the split."})
    task_types: list[int] | None = field(
        default=None, metadata={"help": "ALFWorld task types (1-6) to keep; default: all of the split."}
    )
    scienceworld_tasks: list[str] | None = field(
        default=None, metadata={"help": "ScienceWorld task names to keep; default: all of the split."}
    )
    max_tasks: int | None = field(
        default=None, metadata={"help": "Keep only the first N tasks of the split (smoke runs)."}
    )
    max_episode_steps: int = field(default=30, metadata={"help": "Env steps per episode (paper: 30)."})
    history_length: int | None = field(
        default=None,
        metadata={
            "help": "Observation/action pairs shown in the prompt, -1 for all. Default: the template's "
            "(2 for the paper templates, as verl-agent; all for alfworld_rlvmr, as RLVMR's env_manager)."
        },
    )
    history_older_actions: bool | None = field(
        default=None,
        metadata={
            "help": "Also list the actions of steps older than history_length (RLVMR's ScienceWorld "
            "prompt). Default: the template's (on for scienceworld_rlvmr)."
        },
    )
    reasoning_history: int | None = field(
        default=None,
        metadata={
            "help": "Last N full answers shown in {reasoning_history}. Default: the template's (3 for the "
            "RLVMR templates, as RLVMR's env_manager)."
        },
    )
    inadmissible_action: str = field(
        default="env",
        metadata={
            "help": "A well-formed action that is not admissible: env = sent to the env, no penalty "
            "(verl-agent, RLVMR); invalid = penalised and never sent (gcd-trl's stricter rule)."
        },
    )
    invalid_feedback: str = field(
        default="env",
        metadata={
            "help": "Observation after a format error: env = the env's answer to an unknown command "
            "(as the references, which send the text to the env); reason = that plus why it was invalid."
        },
    )
    num_envs: int | None = field(
        default=None, metadata={"help": "Env worker processes. Default: tasks per round per process x G."}
    )
    step_timeout: float = field(default=60.0, metadata={"help": "Seconds before a step counts as hung."})
    reset_timeout: float = field(default=300.0, metadata={"help": "Seconds before a reset counts as hung."})
    jvm_heap: str = field(default="512m", metadata={"help": "ScienceWorld JVM heap cap (-Xmx)."})
    simplifications: str = field(default="easy", metadata={"help": "ScienceWorld simplification preset."})
    alfworld_expert: str = field(default="handcoded", metadata={"help": "handcoded | planner"})
    prompt_template: str | None = field(
        default=None, metadata={"help": "Agent prompt: a built-in name or a file. Default: per env."}
    )
    meta_reasoning: bool | None = field(
        default=None, metadata={"help": "RLVMR meta-reasoning tags. Default: on for rlvmr, off otherwise."}
    )
    suggestions: str = field(default="", metadata={"help": "Guidelines injected as {suggestions}."})
    generate_games: int = field(
        default=0,
        metadata={
            "help": "ALFWorld: generate this many offline games into data_dir (once; a folder holding exactly "
            "these games is used as it is, one holding other games is refused)."
        },
    )
    generate_seed: int = field(default=0, metadata={"help": "Seed for generated games."})
    max_receptacles: int | None = field(
        default=None,
        metadata={
            "help": "ALFWorld generated games: rooms cut to this many receptacles (the task's always kept; "
            ">= 3). None: full rooms. Small rooms make short games: a curriculum for small models."
        },
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "Held-out tasks for the trainer's eval_steps hook: L0 | L1 | L2 | all (with eval_data_dir). "
            "None: no evaluation during training."
        },
    )
    eval_part: str = field(default="test", metadata={"help": "train | test part of eval_split."})
    eval_data_dir: str | None = field(
        default=None, metadata={"help": "ALFWorld games of the eval split. Default: data_dir."}
    )
    eval_max_tasks: int | None = field(
        default=None, metadata={"help": "Keep only the first N eval tasks (round-robin over task kinds)."}
    )

    def __post_init__(self) -> None:
        _choice("environment", self.environment, ("alfworld", "scienceworld"))
        if self.eval_split is not None:
            _choice("eval_split", self.eval_split, SPLITS)
        _choice("eval_part", self.eval_part, PARTS)
        _at_least("eval_max_tasks", self.eval_max_tasks, 1)
        _choice("split", self.split, SPLITS)
        _choice("part", self.part, PARTS)
        _choice("alfworld_expert", self.alfworld_expert, ("handcoded", "planner"))
        _at_least("max_episode_steps", self.max_episode_steps, 1)
        _at_least("history_length", self.history_length, -1)
        _at_least("reasoning_history", self.reasoning_history, 0)
        _choice("inadmissible_action", self.inadmissible_action, ("env", "invalid"))
        _choice("invalid_feedback", self.invalid_feedback, ("env", "reason"))
        _at_least("num_envs", self.num_envs, 1)
        _at_least("max_tasks", self.max_tasks, 1)
        _at_least("step_timeout", self.step_timeout, 0.001)
        _at_least("reset_timeout", self.reset_timeout, 0.001)
        _at_least("generate_games", self.generate_games, 0)
        for t in self.task_types or []:
            if t not in range(1, 7):
                raise ConfigError(f"task_types contains {t!r}: ALFWorld task types are 1-6")
        if self.task_types and self.environment != "alfworld":
            raise ConfigError("task_types applies to environment=alfworld only")
        if self.scienceworld_tasks and self.environment != "scienceworld":
            raise ConfigError("scienceworld_tasks applies to environment=scienceworld only")
        if self.generate_games and self.environment != "alfworld":
            raise ConfigError("generate_games applies to environment=alfworld only")
        if self.generate_games and not self.data_dir:
            raise ConfigError("generate_games needs data_dir (where the games are written)")
        if self.max_receptacles is not None:
            if self.environment != "alfworld":
                raise ConfigError("max_receptacles applies to environment=alfworld only")
            if isinstance(self.max_receptacles, bool) or not isinstance(self.max_receptacles, int):
                raise ConfigError(f"max_receptacles must be an int or null, got {self.max_receptacles!r}")
            _at_least("max_receptacles", self.max_receptacles, 3)
        if not self.jvm_heap or not self.jvm_heap[:-1].isdigit() or self.jvm_heap[-1].lower() not in "kmg":
            raise ConfigError(f"jvm_heap={self.jvm_heap!r} must look like 512m or 2g")

    def resolved_data_dir(self) -> Path | None:
        """The ALFWorld games directory: data_dir, else $ALFWORLD_DATA/json_2.1.1 (alfworld's layout)."""
        if self.environment != "alfworld":
            return None
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        root = os.environ.get("ALFWORLD_DATA")
        if not root:
            raise ConfigError(
                "data_dir is not set and $ALFWORLD_DATA is unset: say where the ALFWorld games are"
            )
        return Path(root).expanduser() / "json_2.1.1"


@dataclass
class GCDArguments:
    """Generative classification disentanglement: the judge task and prompt-based correction (paper §4).

    docs/gcd.md defines what each field does to a round. The external-judge fields only matter when
    `judge_model` is set; the correction fields only when `correction` is on.
    """

    gcd: bool = field(default=False, metadata={"help": "Co-train the actor as a generative judge."})
    gcd_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the judge loss: L = L_agent + gcd_coef * L_judge (each its own token mean)."
        },
    )
    judge_prompts_per_round: int = field(
        default=16, metadata={"help": "Judge prompts built each round from the round's labelled steps."}
    )
    judge_num_generations: int = field(default=4, metadata={"help": "Judge answers per prompt (its group)."})
    judge_format_penalty: float = field(
        default=0.1,
        metadata={"help": "A judge answer without a parsable \\boxed{0} / \\boxed{1} gets reward -this."},
    )
    judge_class_balance: bool = field(
        default=True,
        metadata={
            "help": "Pick as many good as bad steps (a round without good steps has no judge prompts); "
            "false: fill judge_prompts_per_round from whichever class has steps."
        },
    )
    judge_max_completion_length: int | None = field(
        default=None, metadata={"help": "Token cap of a judge answer. Default: max_completion_length."}
    )
    judge_template: str = field(
        default="critic", metadata={"help": "Critic prompt: a built-in template name or a file."}
    )
    static_judge_prompts_per_round: int = field(
        default=0,
        metadata={"help": "Static judge rows (dataset rows with kind=judge) drawn each round, when present."},
    )
    judge_labels: str = field(
        default="both",
        metadata={
            "help": "rules | external | both: where step labels come from (both: the external label wins "
            "where it exists; without judge_model, both = rules)."
        },
    )
    # ---- the external judge (an OpenAI-compatible chat endpoint) ----
    judge_model: str | None = field(default=None, metadata={"help": "External judge model (OpenAI API)."})
    judge_base_url: str | None = field(
        default=None, metadata={"help": "External judge endpoint, e.g. http://127.0.0.1:8000/v1."}
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Env var holding the judge API key (never the key itself)."},
    )
    judge_votes: int = field(default=3, metadata={"help": "External judge answers per step."})
    judge_min_agree: int = field(
        default=2, metadata={"help": "Keep a label when at least this many answers (and a majority) give it."}
    )
    judge_vote_mode: str = field(
        default="n",
        metadata={
            "help": "n: one request with n=judge_votes (topped up if fewer come back); repeat: one each."
        },
    )
    judge_temperature: float = field(default=0.7, metadata={"help": "External judge sampling temperature."})
    judge_top_p: float = field(default=1.0, metadata={"help": "External judge nucleus sampling."})
    judge_max_tokens: int = field(default=1024, metadata={"help": "Token cap of one external judge answer."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per external judge request."})
    judge_max_retries: int = field(
        default=2,
        metadata={"help": "The openai client's retries on 429 / 5xx / timeouts / connection errors."},
    )
    judge_concurrency: int = field(default=8, metadata={"help": "External requests in flight at once."})
    judge_cache_dir: str | None = field(
        default=None, metadata={"help": "On-disk answer cache. Default: output_dir/judge_cache."}
    )
    judge_max_requests: int | None = field(
        default=None, metadata={"help": "HTTP requests (retries included) the run may send; then the rules."}
    )
    judge_token_budget: int | None = field(
        default=None, metadata={"help": "Prompt+completion tokens the run may spend; then the rules."}
    )
    judge_external_steps_per_round: int = field(
        default=64, metadata={"help": "Steps per round sent to the external judge (sampled, seeded)."}
    )
    # ---- prompt-based correction (golden rules) ----
    correction: bool = field(default=True, metadata={"help": "Summarise critiques into golden rules."})
    correction_every: int = field(default=10, metadata={"help": "Rounds between golden-rule updates."})
    max_rules: int = field(
        default=5, metadata={"help": "Golden rules kept in {suggestions} (themes per update)."}
    )
    correction_source: str = field(
        default="auto",
        metadata={"help": "auto | external | policy: who writes the rules (auto: external if judge_model)."},
    )
    correction_max_advice: int = field(
        default=256, metadata={"help": "Most recent advice sentences kept for the next rules update."}
    )
    suggestion_template: str = field(
        default="suggestion", metadata={"help": "Golden-rule prompt: a built-in template name or a file."}
    )
    rules_file: str | None = field(
        default=None, metadata={"help": "Versioned golden-rules JSON. Default: output_dir/golden_rules.json."}
    )

    def __post_init__(self) -> None:
        _choice("judge_labels", self.judge_labels, JUDGE_LABELS)
        _choice("judge_vote_mode", self.judge_vote_mode, JUDGE_VOTE_MODES)
        _choice("correction_source", self.correction_source, CORRECTION_SOURCES)
        _at_least("gcd_coef", self.gcd_coef, 0.0)
        _at_least("judge_prompts_per_round", self.judge_prompts_per_round, 1)
        _at_least("judge_num_generations", self.judge_num_generations, 2)
        _at_least("judge_format_penalty", self.judge_format_penalty, 0.0)
        _at_least("judge_max_completion_length", self.judge_max_completion_length, 1)
        _at_least("static_judge_prompts_per_round", self.static_judge_prompts_per_round, 0)
        _at_least("judge_votes", self.judge_votes, 1)
        _at_least("judge_min_agree", self.judge_min_agree, 1)
        if self.judge_min_agree > self.judge_votes:
            raise ConfigError(
                f"judge_min_agree={self.judge_min_agree} cannot exceed judge_votes={self.judge_votes}"
            )
        _at_least("judge_temperature", self.judge_temperature, 0.0)
        if not 0.0 < self.judge_top_p <= 1.0:
            raise ConfigError(f"judge_top_p={self.judge_top_p!r} must lie in (0, 1]")
        _at_least("judge_max_tokens", self.judge_max_tokens, 1)
        _at_least("judge_timeout", self.judge_timeout, 0.001)
        _at_least("judge_max_retries", self.judge_max_retries, 0)
        _at_least("judge_concurrency", self.judge_concurrency, 1)
        _at_least("judge_max_requests", self.judge_max_requests, 0)
        _at_least("judge_token_budget", self.judge_token_budget, 0)
        _at_least("judge_external_steps_per_round", self.judge_external_steps_per_round, 0)
        _at_least("correction_every", self.correction_every, 1)
        _at_least("max_rules", self.max_rules, 1)
        _at_least("correction_max_advice", self.correction_max_advice, 1)
        if not self.judge_api_key_env.isidentifier() or self.judge_api_key_env.lower().startswith("sk-"):
            # never echo the value: it may be the key itself
            raise ConfigError(
                "judge_api_key_env must name the environment variable that holds the key (e.g. "
                "DEEPSEEK_API_KEY), not the key; put the key in that variable"
            )
        for key in ("judge_template", "suggestion_template"):
            kind = "critic" if key == "judge_template" else "suggestion"
            try:
                from gcd_trl.prompts import TemplateError, load_template

                load_template(getattr(self, key), kind=kind)
            except TemplateError as err:
                raise ConfigError(f"{key}: {err}") from None
        if self.judge_model and not self.judge_base_url:
            raise ConfigError("judge_model is set but judge_base_url is not")
        if self.judge_base_url and not self.judge_model:
            raise ConfigError("judge_base_url is set but judge_model is not")
        if self.judge_labels == "external" and not self.judge_model:
            raise ConfigError(
                "judge_labels=external needs judge_model and judge_base_url (an external judge)"
            )
        if self.correction_source == "external" and not self.judge_model:
            raise ConfigError("correction_source=external needs judge_model and judge_base_url")


@dataclass
class AgentGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus the round geometry and the advantage estimator.

    A round plays `tasks_per_round` tasks x `num_generations` (G) episodes; every env step becomes one
    sample, and the round's samples make one optimizer step (per `num_iterations` pass), cut into
    micro-batches of at most `max_tokens_per_microbatch` tokens. TRL's own batch fields
    (`per_device_train_batch_size`, `steps_per_generation`, `generation_batch_size`) are derived.
    """

    tasks_per_round: int = field(default=16, metadata={"help": "Tasks per round, over all processes."})
    max_tokens_per_microbatch: int = field(
        default=8192, metadata={"help": "Token budget (padded prompt+completion) of one forward/backward."}
    )
    advantage_estimator: str = field(
        default="grpo", metadata={"help": "grpo | gigpo | rlvmr | gae (PPO with a critic, gcd_trl.ppo)"}
    )
    grpo_level: str = field(
        default="steps", metadata={"help": "Episode normalisation over step samples or trajectories."}
    )
    gamma: float = field(default=0.95, metadata={"help": "Discount of step returns (GiGPO)."})
    omega: float = field(default=1.0, metadata={"help": "Weight of the step-level advantage."})
    step_adv_norm: str = field(default="mean_std", metadata={"help": "mean_std | mean (GiGPO step groups)."})
    invalid_penalty: float = field(default=0.1, metadata={"help": "Reward subtracted for an invalid output."})
    success_reward: float = field(
        default=10.0,
        metadata={
            "help": "Episode reward of a win (verl-agent and RLVMR: 10 * won, so the 0.1 penalty is 1% of it)."
        },
    )
    gigpo_step_reward: str = field(
        default="success",
        metadata={
            "help": "GiGPO step rewards: success = the success reward on the winning step only (the "
            "references); dense = success_reward x the env's per-step reward (ScienceWorld score delta/100)."
        },
    )
    reflection_at_first_step: bool = field(
        default=True,
        metadata={
            "help": "RLVMR: pay <reflection> at a trajectory's first step (RLVMR's code does: it compares "
            "with an empty, invalid previous step); false pays it only after an invalid/inadmissible step."
        },
    )
    similarity_threshold: float | None = field(
        default=None, metadata={"help": "GiGPO: group anchors at least this similar (default: identical)."}
    )
    max_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many rounds (verl-agent's training steps). With ppo_mini_batch_size a "
            "round makes several optimizer steps; max_steps (optimizer steps) is then derived as an upper "
            "bound unless given."
        },
    )
    ppo_mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Step samples per optimizer step: a round is cut into mini-batches of this many samples, "
            "one optimizer step each (verl-agent's ppo_mini_batch_size). None: the whole round is one step."
        },
    )
    save_rollouts: bool = field(
        default=True,
        metadata={"help": "Write each round's step records and advantages to output_dir/rollouts/."},
    )
    low_precision_parameters: bool = field(
        default=False,
        metadata={
            "help": "Allow training bf16/fp16 parameters with a plain optimizer (no fp32 master weights: small "
            "updates vanish). Default: refused; load in float32 with bf16: true, or launch with DeepSpeed/FSDP."
        },
    )
    # ---- PPO with a critic (advantage_estimator: gae), the value-head classifier, NTHR: docs/baselines.md ----
    gae_gamma: float = field(default=1.0, metadata={"help": "GAE discount over a step's tokens (verl: 1.0)."})
    gae_lambda: float = field(default=1.0, metadata={"help": "GAE lambda over a step's tokens (verl: 1.0)."})
    critic_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Critic initialisation (gae). Default: the actor's model."}
    )
    critic_learning_rate: float = field(
        default=1e-5, metadata={"help": "Critic AdamW lr (verl-agent: 1e-5)."}
    )
    critic_weight_decay: float = field(default=0.01, metadata={"help": "Critic AdamW weight decay (verl)."})
    critic_max_grad_norm: float | None = field(
        default=None, metadata={"help": "Critic gradient clip. Default: max_grad_norm."}
    )
    cliprange_value: float = field(
        default=0.5, metadata={"help": "Value clipping: |V_new - V_old| <= this in the value loss (verl)."}
    )
    critic_warmup_rounds: int = field(
        default=0, metadata={"help": "Rounds that train the critic only (verl's trainer.critic_warmup)."}
    )
    value_head_coef: float = field(
        default=0.0,
        metadata={
            "help": "Value-head classifier (paper Table 3 / Fig. 10b): L += coef x BCE of a scalar head on the "
            "actor's hidden state against the GCD step labels. 0: off."
        },
    )
    value_head_learning_rate: float = field(default=1e-5, metadata={"help": "The value head's AdamW lr."})
    value_head_class_balance: bool = field(
        default=True, metadata={"help": "Weigh good and bad steps equally in the value-head BCE."}
    )
    value_head_path: str | None = field(
        default=None,
        metadata={
            "help": "Initial value head (a value SFT output folder or its value_head.safetensors). Default: "
            "the model folder's, if it has one, else a fresh head."
        },
    )
    nthr: bool = field(
        default=False,
        metadata={"help": "GRPO_nthr (Deng et al. 2025a): damp negative tokens coupled to positive samples."},
    )
    nthr_beta: float = field(
        default=1.0, metadata={"help": "NTHR threshold scale: tau = beta x min s+ (Eq. 8)."}
    )
    nthr_eta: str = field(
        default="2|0.5-p|",
        metadata={"help": "NTHR advantage scale of selected tokens: 2|0.5-p| (paper), 1-p, p, or a number."},
    )

    def __post_init__(self) -> None:
        _choice("advantage_estimator", self.advantage_estimator, ESTIMATORS)
        _choice("grpo_level", self.grpo_level, GRPO_LEVELS)
        _choice("step_adv_norm", self.step_adv_norm, STEP_NORMS)
        _at_least("tasks_per_round", self.tasks_per_round, 1)
        _at_least("max_tokens_per_microbatch", self.max_tokens_per_microbatch, 16)
        _at_least("invalid_penalty", self.invalid_penalty, 0.0)
        _choice("gigpo_step_reward", self.gigpo_step_reward, GIGPO_STEP_REWARDS)
        if not self.success_reward > 0:
            raise ConfigError(f"success_reward={self.success_reward!r} must be > 0")
        _at_least("omega", self.omega, 0.0)
        _at_least("ppo_mini_batch_size", self.ppo_mini_batch_size, 1)
        _at_least("max_rounds", self.max_rounds, 1)
        if self.ppo_mini_batch_size and self.max_steps <= 0 and not self.max_rounds:
            raise ConfigError(
                "ppo_mini_batch_size is set: give max_rounds (or max_steps, in optimizer steps); a round's "
                "number of optimizer steps depends on how many step samples it holds, so epochs cannot be "
                "counted in advance"
            )
        if self.max_rounds and self.max_steps <= 0 and self.ppo_mini_batch_size:
            decaying = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
            if not decaying.startswith("constant"):
                raise ConfigError(
                    f"lr_scheduler_type={decaying!r} decays over max_steps optimizer steps, which max_rounds "
                    "with ppo_mini_batch_size cannot fix in advance: set max_steps too, or use a constant schedule"
                )
        if self.use_adaptive_entropy:
            raise ConfigError(
                "use_adaptive_entropy is not supported by AgentGRPOTrainer; set a fixed entropy_coef"
            )
        _at_least("entropy_coef", self.entropy_coef, 0.0)
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma={self.gamma!r} must lie in [0, 1]")
        _check_ablation_fields(self)
        if self.similarity_threshold is not None and not 0.0 < self.similarity_threshold <= 1.0:
            raise ConfigError(f"similarity_threshold={self.similarity_threshold!r} must lie in (0, 1]")
        if self.num_generations is None or self.num_generations < 2:
            raise ConfigError(f"num_generations={self.num_generations!r}: a group needs at least 2 episodes")
        if self.gradient_accumulation_steps != 1:
            raise ConfigError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps}: a round is one optimizer step, "
                "cut into micro-batches by max_tokens_per_microbatch; leave gradient_accumulation_steps at 1"
            )
        if self.generation_batch_size is not None or self.steps_per_generation not in (None, 1):
            raise ConfigError(
                "generation_batch_size / steps_per_generation are derived from tasks_per_round; do not set them"
            )
        if (
            self.max_completion_length is not None
            and self.max_completion_length >= self.max_tokens_per_microbatch
        ):
            raise ConfigError(
                f"max_tokens_per_microbatch={self.max_tokens_per_microbatch} cannot hold one completion of "
                f"max_completion_length={self.max_completion_length} plus its prompt"
            )
        # TRL's batch fields: one "prompt group" per process per step; the real geometry is ours.
        self.per_device_train_batch_size = self.num_generations
        self.steps_per_generation = 1
        super().__post_init__()
        if self.tasks_per_round % self.world_size:
            raise ConfigError(
                f"tasks_per_round={self.tasks_per_round} is not divisible by the {self.world_size} processes: "
                "every process plays whole groups"
            )
        # a process generates for all its envs at once (TRL sizes vLLM's max_num_seqs from this)
        self.per_device_train_batch_size = self.tasks_per_process * self.num_generations
        self.generation_batch_size = self.per_device_train_batch_size * self.world_size

    @property
    def tasks_per_process(self) -> int:
        return self.tasks_per_round // self.world_size


def _check_ablation_fields(c: AgentGRPOConfig) -> None:
    """The PPO critic, value-head classifier and NTHR fields (gcd_trl.ppo, gcd_trl.token_trainer)."""
    for key in ("gae_gamma", "gae_lambda"):
        if not 0.0 <= getattr(c, key) <= 1.0:
            raise ConfigError(f"{key}={getattr(c, key)!r} must lie in [0, 1]")
    for key in ("critic_learning_rate", "cliprange_value", "value_head_learning_rate"):
        if not getattr(c, key) > 0:
            raise ConfigError(f"{key}={getattr(c, key)!r} must be > 0")
    _at_least("critic_weight_decay", c.critic_weight_decay, 0.0)
    _at_least("critic_max_grad_norm", c.critic_max_grad_norm, 0.0)
    _at_least("critic_warmup_rounds", c.critic_warmup_rounds, 0)
    _at_least("value_head_coef", c.value_head_coef, 0.0)
    if c.advantage_estimator != "gae":
        for key in ("critic_model_name_or_path",):
            if getattr(c, key):
                raise ConfigError(f"{key} applies to advantage_estimator=gae only")
        if c.critic_warmup_rounds:
            raise ConfigError("critic_warmup_rounds applies to advantage_estimator=gae only")
    if c.nthr and c.advantage_estimator not in GRPO_FAMILY:
        raise ConfigError(
            f"nthr applies to the group-relative estimators {GRPO_FAMILY}, not "
            f"advantage_estimator={c.advantage_estimator!r}"
        )
    from gcd_trl.advantages.nthr import parse_eta

    try:
        parse_eta(c.nthr_eta)
    except ValueError as err:
        raise ConfigError(f"nthr_eta: {err}") from None


RL_DATACLASSES = (AgentGRPOConfig, EnvArguments, GCDArguments, ModelConfig)


# ---------------------------------------------------------------------------------------------------------
# YAML checks that argparse does not do (it takes YAML values as defaults, unchecked)


def _field_types(classes: tuple[type, ...] = RL_DATACLASSES) -> dict[str, tuple[type, Any]]:
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


def check_yaml(path: str | os.PathLike, classes: tuple[type, ...] = RL_DATACLASSES) -> dict[str, Any]:
    """Read a config for `classes` and reject unknown keys and wrongly typed values, naming them."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
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


def parse_rl_config(
    argv: list[str] | None = None,
) -> tuple[AgentGRPOConfig, EnvArguments, GCDArguments, ModelConfig]:
    """Parse `--config FILE` plus command-line overrides, then check cross-field rules."""
    argv = list(argv or [])
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file path")
        check_yaml(argv[i + 1])
    parser = TrlParser(RL_DATACLASSES)
    try:
        train, env, gcd, model = parser.parse_args_and_config(argv)
    except ConfigError:
        raise
    except SystemExit as err:  # argparse already printed which argument is wrong
        raise ConfigError(
            f"invalid command-line or config value (see the message above): exit {err.code}"
        ) from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    check_combination(train, env, gcd, model)
    return train, env, gcd, model


def derive_max_steps(train: AgentGRPOConfig, env: EnvArguments) -> None:
    """With max_rounds and no max_steps: max_steps becomes an upper bound on the optimizer steps of
    max_rounds rounds (training stops after the last round; AgentGRPOConfig allows this only with a
    constant LR schedule, so the bound changes nothing but progress bars)."""
    if not train.max_rounds or train.max_steps > 0:
        return
    per_round = 1
    if train.ppo_mini_batch_size:
        most_samples = train.tasks_per_round * train.num_generations * env.max_episode_steps
        per_round = math.ceil(most_samples / train.ppo_mini_batch_size)
    train.max_steps = train.max_rounds * train.num_iterations * per_round


def check_combination(
    train: AgentGRPOConfig, env: EnvArguments, gcd: GCDArguments, model: ModelConfig
) -> None:
    """Rules that span dataclasses."""
    if not model.model_name_or_path:
        raise ConfigError("model_name_or_path is not set")
    if env.meta_reasoning is None:
        env.meta_reasoning = train.advantage_estimator == "rlvmr"
    if train.advantage_estimator == "rlvmr" and not env.meta_reasoning:
        raise ConfigError(
            "advantage_estimator=rlvmr rewards meta-reasoning tags: it needs meta_reasoning=true"
        )
    num_envs = env.num_envs or train.tasks_per_process * train.num_generations
    if num_envs < train.num_generations:
        raise ConfigError(
            f"num_envs={num_envs} cannot hold one group of num_generations={train.num_generations} episodes"
        )
    if train.similarity_threshold is not None and train.advantage_estimator != "gigpo":
        raise ConfigError("similarity_threshold applies to advantage_estimator=gigpo only")
    if env.split == "all" and env.environment != "alfworld":
        raise ConfigError("split=all (every game in data_dir) applies to environment=alfworld only")
    if env.prompt_template and not Path(env.prompt_template).suffix == "":
        if not Path(env.prompt_template).is_file():
            raise ConfigError(f"prompt_template file not found: {env.prompt_template}")
    derive_max_steps(train, env)
    strategy = str(getattr(train.eval_strategy, "value", train.eval_strategy))
    if strategy != "no" and not env.eval_split:
        raise ConfigError(f"eval_strategy={strategy!r} needs eval_split (the held-out tasks to evaluate on)")
    if train.use_vllm and train.use_cpu:
        raise ConfigError("use_vllm=true needs a GPU; it cannot be combined with use_cpu=true")


def resolved_dict(
    train: AgentGRPOConfig,
    env: EnvArguments,
    gcd: GCDArguments,
    model: ModelConfig,
    full: bool = False,
    explicit: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The values a run will use, by section. Secrets never appear here (they live in the environment)."""
    ours = {f.name for f in dataclasses.fields(AgentGRPOConfig)} - {
        f.name for f in dataclasses.fields(GRPOConfig)
    }
    core = {
        "output_dir",
        "learning_rate",
        "num_generations",
        "max_completion_length",
        "temperature",
        "top_p",
        "beta",
        "loss_type",
        "num_iterations",
        "epsilon",
        "epsilon_high",
        "max_steps",
        "num_train_epochs",
        "use_vllm",
        "vllm_mode",
        "bf16",
        "use_cpu",
        "seed",
        "logging_steps",
        "save_steps",
        "report_to",
        "push_to_hub",
        "hub_model_id",
    }
    keep = ours | core | (explicit or set())
    trainer = {k: v for k, v in train.to_dict().items() if full or k in keep}
    trainer.pop("hub_token", None)
    return {
        "trainer": dict(sorted(trainer.items())),
        "env": dataclasses.asdict(env),
        "gcd": dataclasses.asdict(gcd),
        "model": dataclasses.asdict(model),
    }


# ---------------------------------------------------------------------------------------------------------
# Parameter precision: bf16 parameters under a plain optimizer lose every update below their resolution

LOW_PRECISION_DTYPES = ("bfloat16", "float16", "half", "bf16", "fp16")
LOW_PRECISION_OPT_IN = "low_precision_parameters"


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
    """"deepspeed" or "fsdp" when the launch shards training with an engine that keeps fp32 master weights
    (DeepSpeed's optimizer; accelerate upcasts FSDP's low-precision parameters under mixed precision)."""
    truthy = ("1", "true", "yes")
    if getattr(train_args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in truthy:
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
