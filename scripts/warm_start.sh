#!/usr/bin/env bash
# `make warm-start`: rebuild the demo's warm start (data/warm_start/) from nothing, on CPU, offline.
#   tiny model -> generated games (full rooms and rooms cut to 3, 5, 8 receptacles) -> agent + judge SFT
#   rows -> `gcd-trl sft` (configs/sft/tiny_alfworld_warm_start.yaml, a fixed step count) -> bf16 export
#   -> closed-loop evaluation on held-out games of each room size, written into its provenance.json.
# data/README.md has the shipped checkpoint's numbers. About 100 min on 2 idle cores (SFT ~75 min).
# SFT_ARGS="--num_threads 1" passes overrides to `gcd-trl sft` (e.g. while the machine does other work).
# Games and SFT rows go to data/alfworld/warm_start/ (the SFT config names them there), the tiny model, the
# SFT run and the closed-loop check to outputs/warm_start/; a rerun reuses finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
WORK=outputs/warm_start
DATA=data/alfworld/warm_start
DEST=${DEST:-data/warm_start}
TYPES=(1 2)
# room size : games : seed (seeds no demo or `make data` set uses)
SETS=("3:200:101" "5:300:102" "8:300:103" "full:300:104")
HELDOUT=("3:15" "5:15" "8:15" "full:30")  # room size : step cap of the closed-loop check (80 games, seed 2)
mkdir -p "$WORK"
start=$(date +%s)

if [ ! -f "$WORK/tiny-model/config.json" ]; then
  $PY -m gcd_trl tiny-model --output_dir "$WORK/tiny-model" --entity_tokens --seed 0
fi

games() {  # folder, room size, count, seed
  local dir=$1 k=$2 n=$3 seed=$4 extra=()
  [ "$k" = full ] || extra=(--max_receptacles "$k")
  $PY -m gcd_trl env generate-alfworld --data_dir "$dir" --generate_games "$n" \
    --generate_seed "$seed" --task_types "${TYPES[@]}" "${extra[@]}" >/dev/null
}
pids=()
for s in "${SETS[@]}"; do
  IFS=: read -r k n seed <<<"$s"
  games "$DATA/games/k$k" "$k" "$n" "$seed" & pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
echo "warm-start: games done ($(( $(date +%s) - start )) s)"

for s in "${SETS[@]}"; do
  IFS=: read -r k n seed <<<"$s"
  agent="$DATA/agent_sft_k$k" judge="$DATA/judge_sft_k$k"
  if [ ! -f "$agent/summary.json" ]; then
    $PY -m gcd_trl data agent-sft --games "$DATA/games/k$k" --prompt_template alfworld_compact --think short \
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
    --model_name_or_path "$WORK/tiny-model" --output_dir "$WORK/sft" ${SFT_ARGS:-}
fi
echo "warm-start: SFT done ($(( $(date +%s) - start )) s)"
$PY scripts/warm_start_export.py export --sft "$WORK/sft" --work "$DATA" --out "$DEST" \
  --seconds $(( $(date +%s) - start ))

# the closed loop, greedy, one episode a game: the numbers data/README.md quotes
for s in "${HELDOUT[@]}"; do
  IFS=: read -r k steps <<<"$s"
  games "$DATA/heldout/k$k" "$k" 80 2
  $PY -m gcd_trl eval --policy model --model_name_or_path "$DEST" --label "warm start" --environment alfworld \
    --data_dir "$DATA/heldout/k$k" --split all --prompt_template alfworld_compact --history_length 2 \
    --max_new_tokens 32 --max_episode_steps "$steps" --num_envs 8 --seed 0 \
    --output_dir "$WORK/eval/k$k" >/dev/null 2>"$WORK/eval_k$k.log"
done
$PY scripts/warm_start_export.py closed-loop --out "$DEST" --eval "$WORK/eval"
echo "warm-start: done ($(( $(date +%s) - start )) s)"
