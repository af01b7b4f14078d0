"""The one small interface every text environment implements.

Environments know nothing of models or trainers: they take an action string and return what the
agent would see. Everything here is plain data so it crosses process boundaries (the env pool).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any

ENV_NAMES = ("alfworld", "scienceworld")


@dataclass(frozen=True)
class Task:
    """One playable task. All G rollouts of a group get the same Task, so they play the same game."""

    env: str
    split: str = ""
    game: str | None = None  # alfworld: the game directory (holds game.tw-pddl and traj_data.json)
    task_type: int | None = None  # alfworld: 1-6, as alfworld numbers them
    task_name: str | None = None  # scienceworld: e.g. "boil"
    variation: int | None = None  # scienceworld: variation index

    def __post_init__(self) -> None:
        if self.env not in ENV_NAMES:
            raise ValueError(f"Task.env must be one of {ENV_NAMES}, got {self.env!r}")
        if self.env == "alfworld" and not self.game:
            raise ValueError("an alfworld Task needs `game` (a game directory)")
        if self.env == "scienceworld" and (self.task_name is None or self.variation is None):
            raise ValueError("a scienceworld Task needs `task_name` and `variation`")

    @property
    def key(self) -> str:
        """A short stable id, used for grouping and logging."""
        if self.env == "alfworld":
            return f"alfworld:{self.game}"
        return f"scienceworld:{self.task_name}:{self.variation}"

    @property
    def seed_key(self) -> str:
        """`key` without the folder the games live in (an ALFWorld game is named by its task and trial
        folders), so that random draws seeded by it are the same wherever a checkout keeps its data."""
        if self.env == "alfworld":
            return "alfworld:" + "/".join(PurePath(str(self.game)).parts[-2:])
        return self.key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**{k: d.get(k) for k in ("env", "split", "game", "task_type", "task_name", "variation")})


@dataclass
class StepResult:
    """What the env reports after reset or step."""

    observation: str  # the raw env observation for this step (no history): GiGPO's anchor
    task_description: str
    admissible_actions: list[str] | None  # None when the env does not enumerate actions
    reward: float = 0.0  # this step's env reward (scienceworld: score delta / 100)
    score: float = 0.0  # cumulative env score (scienceworld 0-100, alfworld 0/1)
    done: bool = False
    won: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"aborted": "reason"} from the pool


class TextEnv(ABC):
    """A text environment that can be reset to a given task."""

    name: str = ""

    @abstractmethod
    def reset(self, task: Task) -> StepResult: ...

    @abstractmethod
    def step(self, action: str) -> StepResult: ...

    @abstractmethod
    def expert_action(self) -> str | None:
        """The expert's next action in the current state (None when it has none)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> TextEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class EnvSpec:
    """Everything a worker process needs to build an env (picklable)."""

    env: str
    jvm_heap: str = "512m"  # scienceworld: -Xmx for the env's JVM
    simplifications: str = "easy"  # scienceworld: preset or comma list, "" for none
    alfworld_expert: str = "handcoded"  # alfworld: "handcoded" | "planner" (walkthrough)
    gold_cache_dir: str | None = None  # scienceworld: share generated gold paths across processes/runs

    def __post_init__(self) -> None:
        if self.env not in ENV_NAMES:
            raise ValueError(f"EnvSpec.env must be one of {ENV_NAMES}, got {self.env!r}")
