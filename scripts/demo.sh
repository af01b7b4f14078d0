#!/usr/bin/env bash
# The offline demo: everything on this machine, no hub, no GPU. Each stage prints what it did.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
GCD=".venv/bin/python -m gcd_trl"
OUT=outputs
mkdir -p $OUT
stage() { printf '\n=== %s ===\n' "$*"; }

stage "1/6 tiny model: tokenizer trained offline + random-init Qwen2 (outputs/tiny-model)"
$GCD tiny-model --out $OUT/tiny-model

stage "2/6 offline ALFWorld games: 12 solvable games, all six task types (outputs/games)"
[ -n "$(ls -A $OUT/games 2>/dev/null)" ] || $GCD env generate-alfworld --out $OUT/games --num 12 --seed 0

stage "3/6 expert replay through the env adapters and prompt code"
$GCD env replay --env alfworld --games $OUT/games
$GCD env replay --env scienceworld --split L0 --limit 2

stage "4/6 expert trajectories for cold-start SFT (outputs/expert_alfworld.jsonl)"
$GCD env expert --env alfworld --games $OUT/games --limit 4 --out $OUT/expert_alfworld.jsonl

stage "5/6 RL: AgentGRPOTrainer, GRPO, tiny model, generated games (configs/rl/tiny_alfworld_grpo.yaml)"
$GCD rl --config configs/rl/tiny_alfworld_grpo.yaml

stage "6/6 credit assignment: GiGPO advantages over the RL run's step records"
steps=$(ls -t $OUT/tiny_alfworld_grpo/rollouts/*.jsonl 2>/dev/null | head -1 || true)
if [ -n "$steps" ]; then
  $GCD advantages --estimator gigpo --input "$steps" --output $OUT/advantages_gigpo.jsonl
  echo "wrote $OUT/advantages_gigpo.jsonl ($(wc -l < $OUT/advantages_gigpo.jsonl) step records)"
fi
echo; echo "demo done. Not in this release yet: GCD judge co-training, SFT and eval commands."
