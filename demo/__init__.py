"""`make demo`: the paper's pipeline end to end on one CPU machine, offline (see `pipeline.py`).

An application of the `gcd_trl` library that lives beside it in the repository (it runs the checkout's
configs, `make data` and the shipped warm start): run it from the repository root as `python -m demo`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: configs/, data/, Makefile
WARM_START = ROOT / "data" / "warm_start"
SCIENCEWORLD_EXPERT_STEPS = 100  # some gold paths are longer than RL's 30 steps
