"""gcd-trl: multi-turn agent RL (GRPO, GiGPO, RLVMR, GCD) for ALFWorld and ScienceWorld on TRL."""

__version__ = "0.1.0"
