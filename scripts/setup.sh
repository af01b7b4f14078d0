#!/usr/bin/env bash
# Idempotent environment setup: a venv, torch (the CPU build 2.13.0 where no NVIDIA GPU is present), the
# package in editable mode with its dev extra, and Java for ScienceWorld.
#
# Without a GPU, PyPI's Linux torch wheel is the CUDA build (GBs of CUDA libraries), so pip is asked for
# PyTorch's CPU index when it answers a short probe; where it does not (offline, a proxy that only serves a
# mirror), pip gets torch==2.13.0 from the index it is configured with, which is the CPU build only where
# that index holds one (a local wheel, a CPU mirror). TORCH_INDEX_URL overrides the CPU index.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VENV/bin/pip" install -q torch            # GPU machine: the CUDA build
  else
    CPU_INDEX=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
    if "$VENV/bin/python" - "$CPU_INDEX" <<'PROBE' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
PROBE
      echo "setup: no GPU: torch 2.13.0, the CPU build from $CPU_INDEX"
      "$VENV/bin/pip" install -q torch==2.13.0 --index-url "$CPU_INDEX" || {  # it serves the deps too
        echo "setup: $CPU_INDEX has no torch 2.13.0 for this machine: pip's configured index instead"
        "$VENV/bin/pip" install -q torch==2.13.0
      }
    else
      echo "setup: no GPU and $CPU_INDEX unreachable: torch 2.13.0 from pip's configured index" \
        "(the CPU build only if that index holds it)"
      "$VENV/bin/pip" install -q torch==2.13.0
    fi
  fi
fi
"$VENV/bin/pip" install -q -e ".[dev]"

if ! command -v java >/dev/null 2>&1; then
  echo "setup: installing Java for ScienceWorld (default-jre-headless)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq default-jre-headless
fi
java -version 2>&1 | head -1
"$VENV/bin/python" -c "import gcd_trl, trl, torch; print('setup: gcd_trl', gcd_trl.__version__, '| trl', trl.__version__, '| torch', torch.__version__)"
