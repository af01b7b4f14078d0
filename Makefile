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

demo: setup  # make demo [FRESH=1] [ROUNDS=N] [SEED=N] [FROM_SCRATCH=1] [CORRECTION=1] [DEMO_SMALL=1]
	bash scripts/demo.sh

.PHONY: warm-start
warm-start: setup  # rebuild data/warm_start/ (the demo's starting point; about 100 min of 2-core CPU, data/README.md)
	bash scripts/warm_start.sh

bench: setup
	bash scripts/bench.sh

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks experiments scripts demo
	$(VENV)/bin/ruff format --check src tests benchmarks experiments scripts demo

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks experiments scripts demo
	$(VENV)/bin/ruff format src tests benchmarks experiments scripts demo

rl: setup
	$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) -m gcd_trl rl --config $(CONFIG)

DATA ?= data
SFT_TEMPLATE ?= alfworld_compact
SFT_THINK ?= short
SFT_GAMES ?= 100
SFT_TYPES ?= 1 2
HELDOUT_GAMES ?= 30
AGENT_SFT := $(DATA)/alfworld/agent_sft_$(SFT_TEMPLATE)
JUDGE_SFT := $(DATA)/alfworld/judge_sft_$(SFT_TEMPLATE)
.PHONY: data
data: setup $(JUDGE_SFT)/summary.json  # offline datasets under data/ (data/README.md): games, agent and judge SFT data
$(DATA)/alfworld/games/.done: $(STAMP)
	$(PY) -m gcd_trl env generate-alfworld --data_dir $(DATA)/alfworld/games/train --generate_games $(SFT_GAMES) \
		--generate_seed 1 --task_types $(SFT_TYPES) & train=$$!; \
	$(PY) -m gcd_trl env generate-alfworld --data_dir $(DATA)/alfworld/games/heldout --generate_games $(HELDOUT_GAMES) \
		--generate_seed 2 --task_types $(SFT_TYPES) & heldout=$$!; \
	wait $$train && wait $$heldout && touch $@
$(AGENT_SFT)/summary.json: $(DATA)/alfworld/games/.done
	$(PY) -m gcd_trl data agent-sft --games $(DATA)/alfworld/games/train --prompt_template $(SFT_TEMPLATE) \
		--think $(SFT_THINK) --recovery_episodes 1 --workers 2 --output_dir $(AGENT_SFT)
$(JUDGE_SFT)/summary.json: $(AGENT_SFT)/summary.json
	$(PY) -m gcd_trl data judge-sft --steps $(AGENT_SFT)/steps \
		--critic_template $(if $(findstring compact,$(SFT_TEMPLATE)),critic_compact,critic) --output_dir $(JUDGE_SFT)

SFT_CONFIG ?= configs/sft/tiny_alfworld.yaml
sft: setup  # make sft [CONFIG=configs/sft/X.yaml]; default: the tiny CPU cold start on `make data`'s data
	@cfg=$(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),$(SFT_CONFIG)); \
	if grep -q "^model_name_or_path: outputs/tiny-model" $$cfg && [ ! -f outputs/tiny-model/config.json ]; then \
		$(PY) -m gcd_trl tiny-model --out outputs/tiny-model --entity_tokens; fi; \
	$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) -m gcd_trl sft --config $$cfg

EVAL_CONFIG ?= configs/eval/alfworld_random_generated.yaml
EVAL_ARGS ?=
eval: setup  # make eval CONFIG=configs/eval/X.yaml [EVAL_ARGS="--split L2 --output_dir DIR"]; no CONFIG: offline smoke eval
	$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) -m gcd_trl eval \
		--config $(if $(filter command line environment,$(origin CONFIG)),$(CONFIG),$(EVAL_CONFIG)) $(EVAL_ARGS)

RUN ?= runs/demo
ANALYZE_ARGS ?= --quick
.PHONY: analyze
analyze: setup  # the paper's diagnostics on a run's checkpoints and rollouts (a demo folder: its GCD run, into its report)
	@if [ -d $(RUN)/rl_gigpo_gcd ]; then \
		$(PY) -m gcd_trl analyze all --run $(RUN)/rl_gigpo_gcd --base $(RUN)/sft --out $(RUN)/analysis $(ANALYZE_ARGS) && \
		$(PY) -m demo --out $(RUN); \
	else $(PY) -m gcd_trl analyze all --run $(RUN) $(ANALYZE_ARGS); fi

clean:
	rm -rf outputs .pytest_cache .ruff_cache
