"""Rank and world size: accelerate's once its state is set up, the launcher's environment before that."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE = """
import os, sys
if sys.argv[1] == "accelerate":
    from accelerate import Accelerator
    Accelerator(cpu=True)  # one process: rank 0 of 1
os.environ.update(RANK="3", WORLD_SIZE="4")  # what a launcher would say
from gcd_trl.dist import is_main_process, process_rank, world_size, print_once
print_once("status line")
print(process_rank(), world_size(), is_main_process(), "accelerate" in sys.modules)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(
        [sys.executable, "-c", CODE, mode], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_rank_is_accelerates_once_its_state_is_initialised():
    proc = _run("accelerate")
    assert proc.stdout.split() == ["0", "1", "True", "True"], proc.stderr
    assert "status line" in proc.stderr


def test_rank_comes_from_the_launcher_without_accelerate_state():
    proc = _run("plain")
    assert proc.stdout.split() == ["3", "4", "False", "False"], proc.stderr  # accelerate not even imported
    assert "status line" not in proc.stderr  # not the main process
