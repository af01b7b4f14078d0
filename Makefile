# gcd-trl — every target works from a fresh clone: each depends on `setup`, which is idempotent.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
CONFIG ?= configs/rl/tiny_alfworld_grpo.yaml
ACCELERATE_CONFIG ?= configs/accelerate/cpu.yaml
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-all demo bench lint format rl sft eval clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/setup.sh $(VENV)
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup  # adds the experts on all 134 real valid_unseen games (~18 min more)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	bash scripts/demo.sh

bench: setup
	bash scripts/bench.sh

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks scripts
	$(VENV)/bin/ruff format src tests benchmarks scripts

rl: setup
	$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) -m gcd_trl rl --config $(CONFIG)

clean:
	rm -rf outputs .pytest_cache .ruff_cache
