"""`gcd-trl rl --accelerate_config cpu --num_processes 2`: the command relaunches itself through accelerate
(two CPU processes, gloo), games are generated once by the main process while the other waits, status lines
print once, and the run ends with one optimizer step, a saved model and summary.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_rl_launches_two_cpu_processes_through_accelerate(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    config = {
        "model_name_or_path": str(tiny_model_dir),
        "output_dir": str(out),
        "environment": "alfworld",
        "data_dir": str(tmp_path / "games"),
        "generate_games": 2,  # written once, by rank 0 first
        "task_types": [1],
        "split": "all",
        "max_episode_steps": 2,
        "tasks_per_round": 2,  # one task per process
        "num_generations": 2,
        "max_completion_length": 8,
        "max_tokens_per_microbatch": 2048,
        "learning_rate": "1e-4",  # a string, as YAML reads 1e-4: accepted as TrlParser accepts it
        "beta": 0.0,
        "max_steps": 5,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "seed": 0,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "gcd_trl", "rl", "--config", str(path), "--accelerate_config", "cpu"]
    cmd += [
        "--num_processes",
        "2",
        "--max_steps",
        "1",
    ]  # the command line overrides the file, as with TrlParser
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    assert log.count("gcd-trl rl: accelerate launch --config_file") == 1
    assert "--num_processes 2" in log
    assert log.count("ALFWorld games generated") == 1  # once, not once per rank
    assert log.count("2 alfworld tasks (split all") == 1 and "on 2 process(es)" in log
    assert log.count("gcd-trl: run summary") == 1
    assert "missing keys" not in log  # tied lm_head is not reported as missing

    ranks = sorted(p.name for p in (out / "rollouts").glob("round_*_rank*.jsonl"))
    assert ranks == ["round_00000_rank0.jsonl", "round_00000_rank1.jsonl"]  # two processes played
    summary = json.loads((out / "summary.json").read_text())
    assert summary["optimizer_steps"] == 1 and summary["rounds_this_session"] == 1
    assert summary["episodes"] == 4  # 2 tasks x G=2, over both processes
    assert set(summary["success_rate_by_task_type"]) == {"pick_and_place_simple"}
    assert (out / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "DeepSeekMath" in card and "2402.03300" in card  # plain GRPO cites GRPO ...
    assert "Rethinking Reward Miscalibration" not in card  # ... and not the GCD paper (gcd is off)
    assert "huggingface.co/datasets" not in card  # no made-up Hub dataset
    assert len(list((tmp_path / "games").rglob("game.tw-pddl"))) == 2
