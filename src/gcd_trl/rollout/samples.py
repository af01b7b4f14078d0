"""A round's training samples, by kind: an env step (`AgentSample`) or a GCD judge answer (`JudgeSample`).

Both kinds carry what the loss needs (token ids, behaviour log-probs, truncation, advantage, weight) and
go through the same micro-batching and loss; each brings its own source: the env step's `StepRecord`, or
the judged step and the judge's verdict. What the trainers attach to a sample during a round is a field
here, not a side table: per-token advantages and critic targets (PPO), NTHR token weights, the step's GCD
rule label (judge task, value head). `kind` (records.KINDS) names the kind in rollout files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from gcd_trl.rollout.episode import StepRecord


@dataclass(eq=False)
class Sample:
    """What every sample carries: token ids, behaviour log-probs (vLLM) and its weight in the loss."""

    prompt_ids: list[int]
    completion_ids: list[int]
    truncated: bool = False
    logprobs: list[float | None] | None = None
    advantage: float = 0.0
    weight: float = 1.0  # multiplies the advantage; 0 drops the sample from the loss
    token_advantages: Any = None  # (T,) per-token advantages (PPO's GAE), used instead of `advantage`

    kind: ClassVar[str] = ""


@dataclass(eq=False, kw_only=True)
class AgentSample(Sample):
    """One env step: the episode's `StepRecord` and what the trainers attach to it this round."""

    record: StepRecord
    repeated: bool = False  # sent the env the same action as the step before
    token_weights: Any = None  # (T,) NTHR weights of the advantage on each completion token
    returns: Any = None  # (T,) the critic's targets (PPO)
    values: Any = None  # (T,) the critic's old values (PPO)
    label: int | None = None  # GCD rule label of the step: 1 good, 0 bad, None unlabelled

    kind: ClassVar[str] = "agent"

    @cached_property
    def record_dict(self) -> dict[str, Any]:
        """`record.to_dict()`, made once per sample (advantages, labels and the rollout file read it)."""
        return self.record.to_dict()

    def row(self, round_index: int) -> dict[str, Any]:
        """The sample as a rollout-file line (`rollout.records` schema)."""
        return {
            **self.record_dict,
            "kind": self.kind,
            "advantage": self.advantage,
            "truncated": self.truncated,
            "round": round_index,
        }


@dataclass(eq=False, kw_only=True)
class JudgeSample(Sample):
    """One answer of the policy judging a step: the critic prompt, the answer, its parsed verdict and reward
    against the step's label, and the judged step (None for a static judge row of the dataset)."""

    prompt: str
    completion: str
    label: int
    label_source: str
    score: int | None  # the answer's \\boxed{0|1}; None when unparsable
    reward: float
    source: dict[str, Any] | None = field(default=None)  # group, traj, step, anchor, action

    kind: ClassVar[str] = "judge"

    def row(self, round_index: int) -> dict[str, Any]:
        """The sample as a rollout-file line: kind "judge", the judged step's ids, label and reward."""
        src = self.source or {}
        return {
            "kind": self.kind,
            "group": src.get("group", -1),
            "traj": src.get("traj", -1),
            "step": src.get("step", -1),
            "anchor": src.get("anchor") or "",
            "prompt": self.prompt,
            "completion": self.completion,
            "valid": self.score is not None,
            "label": self.label,
            "label_source": self.label_source,
            "judge_score": self.score,
            "judge_reward": self.reward,
            "advantage": self.advantage,
            "truncated": self.truncated,
            "round": round_index,
        }
