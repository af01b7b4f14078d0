#!/usr/bin/env bash
# `make bench`: every benchmark, each reporting ratios measured side by side in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
mkdir -p outputs/bench
for b in benchmarks/bench_envs.py benchmarks/bench_advantages.py benchmarks/bench_trainer.py benchmarks/bench_gcd.py benchmarks/bench_ppo.py benchmarks/bench_eval.py; do
  [ -f "$b" ] || { echo "skip $b (not present)"; continue; }
  printf '\n=== %s ===\n' "$b"
  $PY "$b" 2>&1 | tee "outputs/bench/$(basename "$b" .py).txt"
done
