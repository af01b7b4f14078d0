#!/usr/bin/env bash
# GPU smoke run: a few RL rounds on one CUDA GPU with each generation backend, on a locally built
# 33M-parameter Qwen2 and offline-generated ALFWorld games (no hub, no network).
#   scripts/gpu_smoke.sh [OUT_DIR] [STAGES]     STAGES: any of hf,colocate (default: hf,colocate)
# `colocate` needs vLLM (pip install -e '.[vllm]'). Server mode needs a second GPU for `trl vllm-serve`
# (NCCL refuses two ranks on one device for the weight sync), so it is not part of this script.
set -euo pipefail
OUT=${1:-outputs/gpu_smoke}
STAGES=${2:-hf,colocate}
PY=${PYTHON:-python3}

$PY -m gcd_trl tiny-model --output_dir "$OUT/model" --overwrite --hidden_size 512 --num_hidden_layers 8
common=(
    --config configs/rl/tiny_alfworld_grpo.yaml --model_name_or_path "$OUT/model"
    --data_dir "$OUT/games" --generate_games 16 --tasks_per_round 4 --num_generations 4
    --max_completion_length 48 --max_steps 3 --save_strategy no --logging_steps 1
    --use_cpu false --bf16 true
    # A random model's actions are all invalid, so every advantage is 0 and the gradient too. Decoupled
    # weight decay still shrinks the weights by lr*wd = 10% a step, so a vLLM copy that missed a weight
    # sync would show in sampling/sampling_logp_difference (it stays at bf16 noise when sync works).
    --learning_rate 0.1 --weight_decay 1.0
)
launch=($PY -m accelerate.commands.launch --config_file configs/accelerate/single_gpu.yaml -m gcd_trl rl)

for stage in ${STAGES//,/ }; do
    echo "=== stage: $stage"
    case $stage in
        hf) "${launch[@]}" "${common[@]}" --output_dir "$OUT/hf" --use_vllm false ;;
        colocate)
            "${launch[@]}" "${common[@]}" --output_dir "$OUT/colocate" --use_vllm true \
                --vllm_mode colocate --vllm_gpu_memory_utilization 0.3 --vllm_max_model_length 2048 ;;
        *) echo "unknown stage: $stage (expected hf or colocate)" >&2; exit 2 ;;
    esac
done
