"""The RL run's configuration: one YAML file, parsed by TRL's `TrlParser` into four dataclasses.

- `AgentGRPOConfig` (here) extends TRL's `GRPOConfig` with the round geometry and the advantage estimator.
- `EnvArguments` (`rollout.settings`) says which environment, split and prompt the agent plays.
- `GCDArguments` (`gcd.args`) holds the judge task and prompt-based correction.
- `ModelConfig` is TRL's own (model path, LoRA).

`parse_rl_config` reads them and checks the rules that span them; an unknown key, a value of the wrong
type and an impossible combination all raise `ConfigError` naming the key, before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import GRPOConfig, ModelConfig

from gcd_trl.advantages.common import GRPO_FAMILY, RUN_FIELDS, AdvantageConfig, AdvantageConfigError
from gcd_trl.config import (
    ConfigError,
    check_at_least,
    check_at_most,
    low_precision_field,
    parse_dataclasses,
)
from gcd_trl.gcd.args import GCDArguments
from gcd_trl.rollout.settings import MAX_NUM_ENVS, EnvArguments

MAX_TASKS_PER_ROUND = 100_000
TASKS_PER_ROUND_WHY = (
    "a round keeps tasks_per_round x num_generations episodes and all their step samples in memory, and a "
    "process generates for its share at once (TRL sizes vLLM's max_num_seqs from it); the paper uses 16"
)


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
        default=AdvantageConfig.estimator,
        metadata={"help": "grpo | gigpo | rlvmr | gae (PPO with a critic, gcd_trl.trainers.ppo)"},
    )
    grpo_level: str = field(
        default=AdvantageConfig.grpo_level,
        metadata={"help": "Episode normalisation over step samples or trajectories."},
    )
    # the advantage fields take AdvantageConfig's defaults (the references'): one source for the trainer and
    # `gcd-trl advantages`, and AdvantageConfig checks them (`__post_init__` below)
    gamma: float = field(
        default=AdvantageConfig.gamma, metadata={"help": "Discount of step returns (GiGPO)."}
    )
    omega: float = field(
        default=AdvantageConfig.omega, metadata={"help": "Weight of the step-level advantage."}
    )
    step_adv_norm: str = field(
        default=AdvantageConfig.norm, metadata={"help": "mean_std | mean (GiGPO step groups)."}
    )
    invalid_penalty: float = field(
        default=AdvantageConfig.invalid_penalty, metadata={"help": "Reward subtracted for an invalid output."}
    )
    success_reward: float = field(
        default=AdvantageConfig.success_reward,
        metadata={
            "help": "Episode reward of a win (verl-agent and RLVMR: 10 * won, so the 0.1 penalty is 1% of it)."
        },
    )
    gigpo_step_reward: str = field(
        default=AdvantageConfig.step_reward,
        metadata={
            "help": "GiGPO step rewards: success = the success reward on the winning step only (the "
            "references); dense = success_reward x the env's per-step reward (ScienceWorld score delta/100)."
        },
    )
    reflection_at_first_step: bool = field(
        default=AdvantageConfig.reflection_at_first_step,
        metadata={
            "help": "RLVMR: pay <reflection> at a trajectory's first step (RLVMR's code does: it compares "
            "with an empty, invalid previous step); false pays it only after an invalid/inadmissible step."
        },
    )
    similarity_threshold: float | None = field(
        default=AdvantageConfig.similarity_threshold,
        metadata={"help": "GiGPO: group anchors at least this similar (default: identical)."},
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
    push_rollouts: bool = field(
        default=False,
        metadata={
            "help": "With push_to_hub: upload output_dir/rollouts/ too (GBs over a long recipe). The model, "
            "tokenizer, card, run_config.yaml, summary.json and golden rules always go; checkpoints, "
            "judge_cache/ and completions/ never do."
        },
    )
    low_precision_parameters: bool = low_precision_field()
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
        check_advantage_fields(self)
        check_at_least("tasks_per_round", self.tasks_per_round, 1)
        check_at_most("tasks_per_round", self.tasks_per_round, MAX_TASKS_PER_ROUND, TASKS_PER_ROUND_WHY)
        check_at_least("max_tokens_per_microbatch", self.max_tokens_per_microbatch, 16)
        check_at_least("omega", self.omega, 0.0)
        check_at_least("ppo_mini_batch_size", self.ppo_mini_batch_size, 1)
        check_at_least("max_rounds", self.max_rounds, 1)
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
        check_at_least("entropy_coef", self.entropy_coef, 0.0)
        _check_ablation_fields(self)
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


def check_advantage_fields(c: Any) -> AdvantageConfig:
    """The advantage settings of a run config, checked by AdvantageConfig (the one check of them), with
    errors naming the run config's keys. Returns the AdvantageConfig the trainer uses."""
    try:
        return AdvantageConfig.from_args(c)
    except AdvantageConfigError as err:
        raise ConfigError(err.render(RUN_FIELDS)) from None


def _check_ablation_fields(c: AgentGRPOConfig) -> None:
    """The PPO critic, value-head classifier and NTHR fields (gcd_trl.trainers.ppo, gcd_trl.trainers.token)."""
    for key in ("gae_gamma", "gae_lambda"):
        if not 0.0 <= getattr(c, key) <= 1.0:
            raise ConfigError(f"{key}={getattr(c, key)!r} must lie in [0, 1]")
    for key in ("critic_learning_rate", "cliprange_value", "value_head_learning_rate"):
        if not getattr(c, key) > 0:
            raise ConfigError(f"{key}={getattr(c, key)!r} must be > 0")
    check_at_least("critic_weight_decay", c.critic_weight_decay, 0.0)
    check_at_least("critic_max_grad_norm", c.critic_max_grad_norm, 0.0)
    check_at_least("critic_warmup_rounds", c.critic_warmup_rounds, 0)
    check_at_least("value_head_coef", c.value_head_coef, 0.0)
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


def parse_rl_config(
    argv: list[str] | None = None,
) -> tuple[AgentGRPOConfig, EnvArguments, GCDArguments, ModelConfig]:
    """Parse `--config FILE` plus command-line overrides, then check cross-field rules."""
    train, env, gcd, model = parse_dataclasses(argv or [], RL_DATACLASSES)
    env = env.resolved(train.advantage_estimator)  # meta_reasoning decided, on a copy
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
    if train.advantage_estimator == "rlvmr" and not env.meta_reasoning_for(train.advantage_estimator):
        raise ConfigError(
            "advantage_estimator=rlvmr rewards meta-reasoning tags: it needs meta_reasoning=true"
        )
    num_envs = env.num_envs or train.tasks_per_process * train.num_generations
    if num_envs > MAX_NUM_ENVS:  # only the derived default can get here; EnvArguments bounds num_envs
        raise ConfigError(
            f"num_envs defaults to tasks per round per process x num_generations = {num_envs} env worker "
            f"processes, over the limit of {MAX_NUM_ENVS}: set num_envs <= {MAX_NUM_ENVS} (episodes queue "
            "for a free worker) or lower tasks_per_round"
        )
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
        "hub_private_repo",
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
