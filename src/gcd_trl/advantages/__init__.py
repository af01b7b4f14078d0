"""Advantage estimators for multi-turn agents: pure numpy functions of step records.

    batch = records_to_batch(records, "gigpo")        # once per round: ids/strings hashed to int codes
    adv = compute_advantages(batch, "gigpo", gamma=0.95, omega=1.0)   # (n_steps,) float64, record order

`compute_advantage_terms(batch, AdvantageConfig(...))` also returns the episode and step parts.
One module per estimator (grpo.py, gigpo.py, rlvmr.py); their docstrings list the conventions and where
they match verl-agent and RLVMR.

Reward scale: records that carry `won` (as rollout step records do) get episode reward
`success_reward * won`, 10 by default as in verl-agent and RLVMR (`compute_reward` in their
env_package/*/envs.py), so the invalid penalty (0.1) is 1% of a win there and here. Records with an
explicit `episode_reward` / `step_reward` are taken as they are. The trainer (AgentGRPOConfig.success_reward)
and `gcd-trl advantages --success-reward` use the same default, so a rollout file re-scored by the CLI
reproduces the advantages the trainer wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gcd_trl.advantages import gae, gigpo, grpo, rlvmr
from gcd_trl.advantages.common import (
    ESTIMATORS,
    GRPO_FAMILY,
    GRPO_LEVELS,
    NORMS,
    STEP_REWARDS,
    TAGS,
    AdvantageConfig,
    AdvantageConfigError,
    Advantages,
    RecordError,
    StepBatch,
    records_to_batch,
)

_MODULES = {"grpo": grpo, "gigpo": gigpo, "rlvmr": rlvmr, "gae": gae}


def _as_batch(batch: StepBatch | Iterable[Mapping[str, Any]], config: AdvantageConfig) -> StepBatch:
    return batch if isinstance(batch, StepBatch) else records_to_batch(batch, config=config)


def compute_advantage_terms(
    batch: StepBatch | Iterable[Mapping[str, Any]], config: AdvantageConfig
) -> Advantages:
    """Total, episode and step advantages (and the step signal) of every row, in the batch's row order."""
    return _MODULES[config.estimator].compute(_as_batch(batch, config), config)


def compute_advantages(
    batch: StepBatch | Iterable[Mapping[str, Any]], estimator: str = "grpo", **settings: Any
) -> np.ndarray:
    """One advantage per step (float64, aligned with the batch rows / records). `settings` are
    AdvantageConfig fields (gamma, omega, norm, invalid_penalty, similarity_threshold, grpo_level,
    success_reward, step_reward, ...); the ones not given keep AdvantageConfig's defaults."""
    return compute_advantage_terms(batch, AdvantageConfig(estimator=estimator, **settings)).total


__all__ = [
    "ESTIMATORS",
    "GRPO_FAMILY",
    "GRPO_LEVELS",
    "NORMS",
    "STEP_REWARDS",
    "TAGS",
    "AdvantageConfig",
    "AdvantageConfigError",
    "Advantages",
    "RecordError",
    "StepBatch",
    "compute_advantage_terms",
    "compute_advantages",
    "records_to_batch",
]
