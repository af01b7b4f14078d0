#!/usr/bin/env bash
# The room-size ladder of docs/sft.md: on 80 held-out generated games (task types 1-2, seed 2) per room
# size, the random admissible policy (5 episodes a game), the expert and a model (greedy, one episode a
# game): success, admissible share, mean steps. 15 steps in cut rooms, 30 in full rooms.
#   bash scripts/room_ladder.sh [MODEL] [OUT]      (default: data/warm_start, outputs/ladder)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
MODEL=${1:-data/warm_start}
OUT=${2:-outputs/ladder}
for s in "3:15" "5:15" "8:15" "full:30"; do
  IFS=: read -r k steps <<<"$s"
  games="$OUT/games/k$k" extra=()
  [ "$k" = full ] || extra=(--max_receptacles "$k")
  $PY -m gcd_trl env generate-alfworld --data_dir "$games" --generate_games 80 --generate_seed 2 \
    --task_types 1 2 "${extra[@]}" >/dev/null 2>&1
  common=(--environment alfworld --data_dir "$games" --split all --max_episode_steps "$steps" --seed 0
          --prompt_template alfworld_compact --history_length 2)
  for policy in random expert model; do
    args=(--policy "$policy" --label "$policy" --num_envs 4)
    [ "$policy" = random ] && args+=(--num_samples 5)
    [ "$policy" = model ] && args=(--policy model --label "$(basename "$MODEL")" --model_name_or_path "$MODEL"
                                   --max_new_tokens 32 --num_envs 8)
    $PY -m gcd_trl eval "${args[@]}" "${common[@]}" --output_dir "$OUT/k$k/$policy" >/dev/null 2>"$OUT/k$k.$policy.log"
  done
done
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| rooms | policy | success | admissible | mean steps (won) |")
print("|---|---|---|---|---|")
for k in ("3", "5", "8", "full"):
    for policy in ("random", "expert", "model"):
        r = json.loads((out / f"k{k}" / policy / "report.json").read_text())
        adm = 1 - r["invalid_rate"] - r["inadmissible_rate"]
        won = r.get("mean_steps_won")
        print(f"| {k} | {r['label']} | {r['success']}/{r['episodes']} ({100 * r['success_rate']:.1f}%) | "
              f"{100 * adm:.1f}% | {r['mean_steps']:.1f} ({'-' if won is None else f'{won:.1f}'}) |")
PY
