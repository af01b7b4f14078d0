"""Export the warm start (`make warm-start`'s last steps): the SFT checkpoint as bfloat16 safetensors with its
tokenizer, and `provenance.json` (command, data, tokens, wall time, machine, closed-loop numbers).

    python scripts/warm_start_export.py export --sft outputs/warm_start/sft --work outputs/warm_start \
        --out data/warm_start --seconds 5400
    python scripts/warm_start_export.py closed-loop --out data/warm_start --eval outputs/warm_start/eval

The checkpoint is trained with float32 weights; bf16 halves the file (10.5 MB for the 5.2M-parameter
model) and a run that loads it with `dtype: float32` trains fp32 masters again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/sft/tiny_alfworld_warm_start.yaml"


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _games(folder: Path) -> dict:
    """How many games a generated folder holds, their seed(s) and room size."""
    from gcd_trl.envs.alfworld_gen import describe_games, folder_games, folder_max_receptacles

    found = folder_games(folder)
    return {
        "games": len(found),
        "described": describe_games(found),
        "max_receptacles": folder_max_receptacles(found),
    }


def _last_state(sft: Path) -> dict:
    states = sorted(
        sft.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])
    )
    if (sft / "trainer_state.json").is_file():  # the run's own final state (with train_runtime), when saved
        states.append(sft / "trainer_state.json")
    if not states:
        return {}
    state = json.loads(states[-1].read_text())
    logs = state.get("log_history", [])
    tokens = max((row.get("num_tokens", 0) for row in logs), default=0)
    loss = [row["loss"] for row in logs if "loss" in row]
    return {
        "global_step": state.get("global_step"),
        "num_tokens": tokens,
        "final_loss": loss[-1] if loss else None,
        "train_runtime_s": next((row["train_runtime"] for row in logs if "train_runtime" in row), None),
    }


def export(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft, work, out = Path(args.sft), Path(args.work), Path(args.out)
    model = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(sft)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*"):
        if old.is_file() and old.name != "provenance.json":
            old.unlink()
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size="4MB")  # files under 5 MB for git
    tokenizer.save_pretrained(out)
    data = {}
    for folder in sorted(work.glob("agent_sft_*")) + sorted(work.glob("judge_sft_*")):
        summary = _summary(folder)
        data[folder.name] = {
            k: summary.get(k) for k in ("rows", "tokens", "episodes", "good", "bad") if k in summary
        }
    games = {d.name: _games(d) for d in sorted((work / "games").glob("*")) if d.is_dir()}
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    provenance = {
        "command": "make warm-start",
        "config": CONFIG,
        "script": "scripts/warm_start.sh",
        "git_commit": commit,
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "sft_args": os.environ.get("SFT_ARGS", ""),
        },
        "wall_time_s": args.seconds,
        "games": games,
        "datasets": data,
        "sft": _last_state(sft),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "bfloat16",
    }
    old = out / "provenance.json"
    if old.is_file():
        provenance["closed_loop"] = json.loads(old.read_text()).get("closed_loop", {})
    old.write_text(json.dumps(provenance, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(f"warm start: {provenance['parameters']:,} parameters, {size:.1f} MB in {out}")
    return 0


def closed_loop(args: argparse.Namespace) -> int:
    """Add the eval reports under --eval (one folder per room size) to provenance.json."""
    out = Path(args.out)
    path = out / "provenance.json"
    provenance = json.loads(path.read_text()) if path.is_file() else {}
    rows = {}
    for report in sorted(Path(args.eval).glob("*/report.json")):
        r = json.loads(report.read_text())
        rows[report.parent.name] = {
            "episodes": r["episodes"],
            "success": r["success"],
            "success_rate": round(r["success_rate"], 4),
            "admissible_rate": round(1.0 - r["invalid_rate"] - r["inadmissible_rate"], 4),
            "mean_steps": round(r["mean_steps"], 2),
            "max_episode_steps": json.loads((report.parent / "eval_config.json").read_text())["identity"][
                "max_episode_steps"
            ],
        }
    provenance["closed_loop"] = rows
    path.write_text(json.dumps(provenance, indent=2) + "\n")
    for name, row in rows.items():
        print(
            f"{name}: {row['success']}/{row['episodes']} won, {100 * row['admissible_rate']:.1f}% admissible"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--sft", required=True)
    e.add_argument("--work", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--seconds", type=int, default=0)
    c = sub.add_parser("closed-loop")
    c.add_argument("--out", required=True)
    c.add_argument("--eval", required=True)
    args = p.parse_args(argv)
    return export(args) if args.cmd == "export" else closed_loop(args)


if __name__ == "__main__":
    sys.exit(main())
