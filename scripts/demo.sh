#!/usr/bin/env bash
# `make demo`: the paper's pipeline offline on this machine (demo/pipeline.py says what runs).
#   make demo [FRESH=1] [ROUNDS=N] [SEED=N] [DEMO_SMALL=1]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m demo "$@"
