#!/usr/bin/env bash
# Idempotent environment setup: a venv, torch (CPU build 2.13.0 where no NVIDIA GPU is present), the
# package in editable mode with its dev extra, and Java for ScienceWorld.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VENV/bin/pip" install -q torch            # GPU machine: the CUDA build
  else
    "$VENV/bin/pip" install -q torch==2.13.0    # CPU machine: the local CPU wheel
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
