"""Text environments (no torch, no TRL): ALFWorld, ScienceWorld, the parallel pool and the splits."""

from gcd_trl.envs.base import ENV_NAMES, EnvSpec, StepResult, Task, TextEnv
from gcd_trl.envs.registry import make_env

__all__ = ["ENV_NAMES", "EnvSpec", "StepResult", "Task", "TextEnv", "make_env"]
