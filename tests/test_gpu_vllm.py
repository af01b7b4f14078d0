"""vLLM colocate on a real GPU: episodes are generated through TRL's vLLM backend, its log-probs match the
trainer's, and vLLM follows the trainer's weights after a step (a stale copy is caught), for full
fine-tuning and for a LoRA adapter. Skipped without a CUDA GPU and vLLM, as on CI; run `pytest -m gpu` on a
GPU machine with `pip install -e '.[vllm]'`. Each case runs tests/gpu_vllm_probe.py in its own process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="needs vLLM (pip install -e '.[vllm]')"
    ),
]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_vllm_logprobs_follow_trainer_weights(mode, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "gpu_vllm_probe.py"), mode, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("GAPS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    gap = json.loads(lines[-1][5:])
    print(f"{mode}: log-prob gap {gap}")
    # Seen on an H200 (bf16): full in sync 0.002, stale 23.5, synced 0.002; LoRA 0.002, 0.40, 0.064 (the
    # adapter is merged into bf16 weights for vLLM, which rounds). Without a working sync, synced = stale.
    assert gap["in_sync"] < 0.05
    assert gap["stale"] > 0.2
    assert gap["synced"] < gap["stale"] / 4
