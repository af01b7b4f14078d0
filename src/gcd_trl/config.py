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
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import GRPOConfig, ModelConfig, TrlParser

ESTIMATORS = ("grpo", "gigpo", "rlvmr")
GRPO_LEVELS = ("steps", "trajectories")
STEP_NORMS = ("mean_std", "mean")
SPLITS = ("L0", "L1", "L2", "all")
PARTS = ("train", "test")
JUDGE_LABELS = ("rules", "external", "both")


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
    history_length: int = field(default=2, metadata={"help": "Observation/action pairs shown in the prompt."})
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
        metadata={"help": "ALFWorld: generate this many offline games into data_dir if it has none."},
    )
    generate_seed: int = field(default=0, metadata={"help": "Seed for generated games."})

    def __post_init__(self) -> None:
        _choice("environment", self.environment, ("alfworld", "scienceworld"))
        _choice("split", self.split, SPLITS)
        _choice("part", self.part, PARTS)
        _choice("alfworld_expert", self.alfworld_expert, ("handcoded", "planner"))
        _at_least("max_episode_steps", self.max_episode_steps, 1)
        _at_least("history_length", self.history_length, 0)
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
    """Generative classification disentanglement: the judge task and prompt-based correction (paper §4)."""

    gcd: bool = field(default=False, metadata={"help": "Co-train the actor as a generative judge."})
    gcd_coef: float = field(default=1.0, metadata={"help": "Weight of judge samples in the loss."})
    judge_prompts_per_round: int = field(default=16, metadata={"help": "Judge prompts built each round."})
    judge_num_generations: int = field(default=4, metadata={"help": "Judge answers per prompt (its group)."})
    judge_labels: str = field(
        default="both", metadata={"help": "rules | external | both: where action labels come from."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "External judge model (OpenAI API)."})
    judge_base_url: str | None = field(default=None, metadata={"help": "External judge endpoint."})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Env var holding the judge API key (never the key itself)."},
    )
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per external judge request."})
    correction: bool = field(default=True, metadata={"help": "Summarise critiques into golden rules."})
    correction_every: int = field(default=10, metadata={"help": "Rounds between golden-rule updates."})
    max_rules: int = field(default=5, metadata={"help": "Golden rules kept in {suggestions}."})

    def __post_init__(self) -> None:
        _choice("judge_labels", self.judge_labels, JUDGE_LABELS)
        _at_least("gcd_coef", self.gcd_coef, 0.0)
        _at_least("judge_prompts_per_round", self.judge_prompts_per_round, 1)
        _at_least("judge_num_generations", self.judge_num_generations, 2)
        _at_least("judge_timeout", self.judge_timeout, 0.001)
        _at_least("correction_every", self.correction_every, 1)
        _at_least("max_rules", self.max_rules, 1)
        if self.gcd:
            raise ConfigError(
                "gcd=true: GCD co-training is not part of this release yet; run with gcd=false "
                "(the GRPO / GiGPO / RLVMR baselines)"
            )
        if self.judge_labels in ("external", "both") and self.judge_model and not self.judge_base_url:
            raise ConfigError("judge_model is set but judge_base_url is not")


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
    advantage_estimator: str = field(default="grpo", metadata={"help": "grpo | gigpo | rlvmr"})
    grpo_level: str = field(
        default="steps", metadata={"help": "Episode normalisation over step samples or trajectories."}
    )
    gamma: float = field(default=0.95, metadata={"help": "Discount of step returns (GiGPO)."})
    omega: float = field(default=1.0, metadata={"help": "Weight of the step-level advantage."})
    step_adv_norm: str = field(default="mean_std", metadata={"help": "mean_std | mean (GiGPO step groups)."})
    invalid_penalty: float = field(default=0.1, metadata={"help": "Reward subtracted for an invalid output."})
    similarity_threshold: float | None = field(
        default=None, metadata={"help": "GiGPO: group anchors at least this similar (default: identical)."}
    )
    save_rollouts: bool = field(
        default=True,
        metadata={"help": "Write each round's step records and advantages to output_dir/rollouts/."},
    )

    def __post_init__(self) -> None:
        _choice("advantage_estimator", self.advantage_estimator, ESTIMATORS)
        _choice("grpo_level", self.grpo_level, GRPO_LEVELS)
        _choice("step_adv_norm", self.step_adv_norm, STEP_NORMS)
        _at_least("tasks_per_round", self.tasks_per_round, 1)
        _at_least("max_tokens_per_microbatch", self.max_tokens_per_microbatch, 16)
        _at_least("invalid_penalty", self.invalid_penalty, 0.0)
        _at_least("omega", self.omega, 0.0)
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma={self.gamma!r} must lie in [0, 1]")
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


RL_DATACLASSES = (AgentGRPOConfig, EnvArguments, GCDArguments, ModelConfig)


# ---------------------------------------------------------------------------------------------------------
# YAML checks that argparse does not do (it takes YAML values as defaults, unchecked)


def _field_types() -> dict[str, tuple[type, Any]]:
    out: dict[str, tuple[type, Any]] = {}
    for cls in RL_DATACLASSES:
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
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run config and reject unknown keys and wrongly typed values, naming them."""
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
    known = _field_types()
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
