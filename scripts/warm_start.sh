#!/usr/bin/env bash
# `make warm-start`: rebuild the demo's warm start (data/warm_start/) from nothing, on CPU, offline.
#   tiny model -> generated games (full rooms and rooms cut to 3, 5, 8 receptacles) -> agent + judge SFT
#   rows -> `gcd-trl sft` (configs/sft/tiny_alfworld_warm_start.yaml, a fixed step count) -> bf16 export
#   with its provenance. data/README.md has the numbers of the shipped checkpoint.
# outputs/warm_start holds everything but the export (the SFT config names its datasets there); a rerun
# reuses finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
WORK=outputs/warm_start
DEST=${DEST:-data/warm_start}
TYPES=(1 2)
# room size : games : seed (seeds no demo or `make data` set uses)
SETS=("3:200:101" "5:300:102" "8:300:103" "full:300:104")
mkdir -p "$WORK"
start=$(date +%s)

if [ ! -f "$WORK/tiny-model/config.json" ]; then
  $PY -m gcd_trl tiny-model --output_dir "$WORK/tiny-model" --entity_tokens --seed 0
fi

games() {  # room size, count, seed
  local k=$1 n=$2 seed=$3 extra=()
  [ "$k" = full ] || extra=(--max_receptacles "$k")
  $PY -m gcd_trl env generate-alfworld --data_dir "$WORK/games/k$k" --generate_games "$n" \
    --generate_seed "$seed" --task_types "${TYPES[@]}" "${extra[@]}" >/dev/null
}
pids=()
for s in "${SETS[@]}"; do
  IFS=: read -r k n seed <<<"$s"
  games "$k" "$n" "$seed" & pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
echo "warm-start: games done ($(( $(date +%s) - start )) s)"

for s in "${SETS[@]}"; do
  IFS=: read -r k n seed <<<"$s"
  agent="$WORK/agent_sft_k$k" judge="$WORK/judge_sft_k$k"
  if [ ! -f "$agent/summary.json" ]; then
    $PY -m gcd_trl data agent-sft --games "$WORK/games/k$k" --prompt_template alfworld_compact --think short \
      --recovery_episodes 2 --perturbations repeat absent irrelevant invalid --workers 2 --seed "$seed" \
      --tokenizer "$WORK/tiny-model" --quiet --output_dir "$agent" >/dev/null
  fi
  if [ ! -f "$judge/summary.json" ]; then
    $PY -m gcd_trl data judge-sft --steps "$agent/steps" --critic_template critic_compact \
      --output_dir "$judge" >/dev/null
  fi
done
echo "warm-start: SFT rows done ($(( $(date +%s) - start )) s)"

if [ ! -f "$WORK/sft/config.json" ]; then
  $PY -m gcd_trl sft --config configs/sft/tiny_alfworld_warm_start.yaml \
    --model_name_or_path "$WORK/tiny-model" --output_dir "$WORK/sft"
fi
echo "warm-start: SFT done ($(( $(date +%s) - start )) s)"
$PY -m gcd_trl.demo.warm_start export --sft "$WORK/sft" --work "$WORK" --out "$DEST" \
  --seconds $(( $(date +%s) - start ))
