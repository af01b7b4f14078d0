"""PPO's critic and the value head under DDP: two processes (torchrun, gloo) holding unequal shares of a round
give the single-process result: the same whitened token advantages (statistics over all processes), the same
actor gradient, the same critic gradient (its loss a token mean over all processes, synchronised on the
last micro-batch) and the same value-head gradient (averaged by hand)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

_WORKER = """
import os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_ppo_ddp import run_case

rank = int(os.environ["RANK"])
model_dir, out_dir = sys.argv[1], sys.argv[2]
result = {{case: run_case(case, model_dir, os.path.join(out_dir, f"{{case}}-{{rank}}"), rank, 2)
          for case in ("gae", "value_head")}}
torch.save(result, os.path.join(out_dir, f"result-{{rank}}.pt"))
torch.distributed.destroy_process_group()
"""


def run_case(case: str, model_dir, out_dir, rank: int, world: int) -> dict:
    """One process's share of a round (all of it when world = 1): token advantages and gradients."""
    from test_token_trainer import _samples, _trainer

    over = {"advantage_estimator": "gae", "critic_learning_rate": 1e-3} if case == "gae" else {}
    if case == "value_head":
        over = {"value_head_coef": 1.0}
    trainer = _trainer(model_dir, out_dir, tasks_per_round=2, max_tokens_per_microbatch=64, **over)
    samples = _samples(trainer)
    mine = samples if world == 1 else (samples[:4] if rank == 0 else samples[4:])
    model = trainer.accelerator.prepare_model(trainer.model) if world > 1 else trainer.model
    if world > 1:
        assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    model.train()
    out: dict = {}
    if case == "gae":
        if world > 1:
            assert isinstance(trainer.critic, torch.nn.parallel.DistributedDataParallel)
        trainer._advantages(mine)
        out["advantages"] = [torch.as_tensor(s.token_advantages) for s in mine]

        def capture():
            out["critic"] = torch.cat([p.grad.flatten() for p in trainer.critic.parameters()]).clone()

        trainer.critic_optimizer.step = capture
    else:
        for i, s in enumerate(mine):
            if (i + (4 if rank == 1 else 0)) % 3 != 2:
                s.label = int(s.record.won)

        def capture():
            out["head"] = torch.cat([p.grad.flatten() for p in trainer.value_head.parameters()]).clone()

        trainer.value_head_optimizer.step = capture
    update = trainer._make_update(mine)
    trainer._accumulate(model, update)
    out["actor"] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()
    if case == "value_head":
        trainer._step_value_head()
    return out


def test_ppo_and_value_head_split_over_two_processes(tiny_model_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(script), str(tiny_model_dir), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"result-{r}.pt") for r in range(2)]
    for case in ("gae", "value_head"):
        ref = run_case(case, tiny_model_dir, tmp_path / f"{case}-single", 0, 1)
        for r in range(2):
            torch.testing.assert_close(ranks[r][case]["actor"], ref["actor"], rtol=1e-4, atol=1e-6)
        if case == "gae":
            split = ranks[0][case]["advantages"] + ranks[1][case]["advantages"]
            for a, b in zip(split, ref["advantages"]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            for r in range(2):
                torch.testing.assert_close(ranks[r][case]["critic"], ref["critic"], rtol=1e-4, atol=1e-6)
        else:
            for r in range(2):
                torch.testing.assert_close(ranks[r][case]["head"], ref["head"], rtol=1e-4, atol=1e-6)
