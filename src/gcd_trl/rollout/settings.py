"""`EnvArguments`: which environment the agent plays, on which tasks, with which prompt, and the one place
that turns them into what a rollout needs (the env spec, the prompt template, the env pool).

Used alike by RL (`trainers`), evaluation (`eval`) and the data builders (`data`), so an episode is played
by the same rules everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from gcd_trl.config import ConfigError, check_at_least, check_at_most, check_choice
from gcd_trl.envs.alfworld import EXPERTS as ALFWORLD_EXPERTS
from gcd_trl.envs.base import ENV_NAMES, EnvSpec
from gcd_trl.envs.splits import ALFWORLD_ALL, LEVELS, PARTS
from gcd_trl.prompts import agent_template_name
from gcd_trl.rollout.episode import INVALID_FEEDBACK
from gcd_trl.rollout.parse import INADMISSIBLE_MODES

SPLITS = (*LEVELS, ALFWORLD_ALL)  # "all": every game under data_dir (ALFWorld)
# upper bounds on sizes that cost processes or memory, each with the reason the error gives
MAX_NUM_ENVS = 256
NUM_ENVS_WHY = (
    "each env worker is a process (ScienceWorld's with its own JVM, jvm_heap each); episodes beyond the "
    "workers queue for a free one, so more workers only exhaust processes and memory"
)
MAX_EPISODE_STEPS = 1000
EPISODE_STEPS_WHY = (
    "the paper's episodes take 30 (ALFWorld) to 100 (ScienceWorld expert paths) steps, and every step is "
    "a training sample, so a round could hold tasks_per_round x num_generations x this many"
)


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
        check_choice("environment", self.environment, ENV_NAMES)
        if self.eval_split is not None:
            check_choice("eval_split", self.eval_split, SPLITS)
        check_choice("eval_part", self.eval_part, PARTS)
        check_at_least("eval_max_tasks", self.eval_max_tasks, 1)
        check_choice("split", self.split, SPLITS)
        check_choice("part", self.part, PARTS)
        check_choice("alfworld_expert", self.alfworld_expert, ALFWORLD_EXPERTS)
        check_at_least("max_episode_steps", self.max_episode_steps, 1)
        check_at_most("max_episode_steps", self.max_episode_steps, MAX_EPISODE_STEPS, EPISODE_STEPS_WHY)
        check_at_least("history_length", self.history_length, -1)
        check_at_least("reasoning_history", self.reasoning_history, 0)
        check_choice("inadmissible_action", self.inadmissible_action, INADMISSIBLE_MODES)
        check_choice("invalid_feedback", self.invalid_feedback, INVALID_FEEDBACK)
        check_at_least("num_envs", self.num_envs, 1)
        check_at_most("num_envs", self.num_envs, MAX_NUM_ENVS, NUM_ENVS_WHY)
        check_at_least("max_tasks", self.max_tasks, 1)
        check_at_least("step_timeout", self.step_timeout, 0.001)
        check_at_least("reset_timeout", self.reset_timeout, 0.001)
        check_at_least("generate_games", self.generate_games, 0)
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
            check_at_least("max_receptacles", self.max_receptacles, 3)
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

    # ---- what a rollout needs, derived in one place -----------------------------------------------------
    def meta_reasoning_for(self, estimator: str | None = None) -> bool:
        """Whether prompts ask for RLVMR's meta-reasoning tags: `meta_reasoning` when set, else on for the
        rlvmr estimator only. The one place this default is decided; nothing writes it back."""
        return bool(self.meta_reasoning) if self.meta_reasoning is not None else estimator == "rlvmr"

    def resolved(self, estimator: str | None = None) -> EnvArguments:
        """A copy with `meta_reasoning` decided for `estimator` (`parse_rl_config` returns this)."""
        return replace(self, meta_reasoning=self.meta_reasoning_for(estimator))

    def template_name(self, meta_reasoning: bool | None = None) -> str:
        """The agent prompt template (`prompts.agent_template_name`: prompt_template, else the env's)."""
        meta = self.meta_reasoning_for() if meta_reasoning is None else meta_reasoning
        return agent_template_name(self.prompt_template, self.environment, meta)

    def load_template(self, meta_reasoning: bool | None = None) -> str:
        """The agent template's text, checked; ConfigError naming prompt_template when it cannot be used."""
        from gcd_trl.prompts import TemplateError, load_template

        try:
            return load_template(self.template_name(meta_reasoning), "agent")
        except TemplateError as err:
            raise ConfigError(f"prompt_template: {err}") from err

    def spec(self, gold_cache_dir: str | os.PathLike | None = None) -> EnvSpec:
        """What an env worker needs to build the env (`envs.registry.make_env`)."""
        return EnvSpec(
            self.environment,
            jvm_heap=self.jvm_heap,
            simplifications=self.simplifications,
            alfworld_expert=self.alfworld_expert,
            gold_cache_dir=None if gold_cache_dir is None else str(gold_cache_dir),
        )

    def make_pool(self, num_envs: int, gold_cache_dir: str | os.PathLike | None = None, **kwargs):
        """An `EnvPool` of `num_envs` workers with this run's timeouts (`kwargs`: EnvPool's, e.g. env_factory)."""
        from gcd_trl.envs.pool import EnvPool

        return EnvPool(
            self.spec(gold_cache_dir),
            num_envs,
            step_timeout=self.step_timeout,
            reset_timeout=self.reset_timeout,
            **kwargs,
        )


# ---- the tasks an EnvArguments names ---------------------------------------------------------------------
def build_tasks(env_args: EnvArguments, log: str = "gcd-trl") -> list:
    """The tasks of `split` / `part` narrowed as the arguments say (`envs.tasks.select_tasks`), generating
    the ALFWorld games first when `generate_games` asks. ConfigError names the problem (`log` prefixes the
    status line about generated games)."""
    from gcd_trl.envs.tasks import select_tasks

    data_dir = None
    if env_args.environment == "alfworld":
        data_dir = env_args.resolved_data_dir()
        if env_args.generate_games:
            prepare_games(env_args, data_dir, log)
    try:
        tasks = select_tasks(
            env_args.environment,
            env_args.split,
            env_args.part,
            data_dir,
            task_types=env_args.task_types,
            scienceworld_tasks=env_args.scienceworld_tasks,
            max_tasks=env_args.max_tasks,
        )
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"tasks: {err}") from err
    if env_args.max_receptacles is not None and not env_args.generate_games:
        from gcd_trl.envs.alfworld_gen import game_max_receptacles

        size = game_max_receptacles(tasks[0].game)  # a split holds one room size
        if size != env_args.max_receptacles:
            raise ConfigError(
                f"max_receptacles: {env_args.max_receptacles}, but the games under {data_dir} have "
                + ("full rooms" if size is None else f"rooms of {size} receptacles")
                + ": point data_dir at games of that size, or unset max_receptacles"
            )
    return tasks


def build_eval_tasks(env_args: EnvArguments) -> list:
    """The held-out tasks of `eval_split` (the RL trainer's eval_steps hook), or [] when none is set."""
    if not env_args.eval_split:
        return []
    held_out = replace(
        env_args,
        split=env_args.eval_split,
        part=env_args.eval_part,
        data_dir=env_args.eval_data_dir or env_args.data_dir,
        max_tasks=env_args.eval_max_tasks,
        generate_games=0,
        eval_split=None,
    )
    return build_tasks(held_out)


def prepare_games(env_args: EnvArguments, data_dir: Path, log: str = "gcd-trl") -> None:
    """`generate_games` games into data_dir, written once: by the main process first while the other ranks
    wait (when a process group exists), under a file lock (so concurrent runs on one folder do not race).
    A folder holding other games is refused; a folder holding exactly these games is used as it is."""
    from gcd_trl import files
    from gcd_trl.dist import is_main_process, main_process_first, print_once
    from gcd_trl.envs.alfworld_gen import GamesFolderError, generate_games

    types = tuple(env_args.task_types or range(1, 7))
    n, seed = env_args.generate_games, env_args.generate_seed
    stats: dict = {}
    with main_process_first(), files.folder_lock(data_dir):
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
            raise ConfigError(
                f"data_dir: {err}. To train on the games that are there, set generate_games: 0; to generate "
                "new ones, point data_dir at an empty folder"
            ) from None
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"generate_games: {err}") from None
    what = "found" if stats.get("reused") else "generated"
    print_once(f"{log}: data_dir {data_dir}: {n} ALFWorld games {what} (generate_seed {seed})")
