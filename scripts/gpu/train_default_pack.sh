#!/usr/bin/env bash
# GPU: self-distil, train the default model's heads both ways (shared vs own lm_head), compare them
# by accepted length per byte of pack, and write the packs + logs under $OUT.
# Expects /root/smollm2.gguf (staged with ../shared/tools/stage-smollm2) and the project installed.
set -euo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
steps=${STEPS:-2000}
common=(--model smollm2-135m --steps "$steps" --batch-size 16 --seq-len 512 --lr 1e-3 --num-heads 4
        --distill-tokens 512 --distill-batch-size 96 --checkpoint-every 500)
base=()
[[ -f results/smollm2-patterns-r95.safetensors ]] && base=(--pack results/smollm2-patterns-r95.safetensors)
t0=$(date +%s)
accel train-heads "${common[@]}" "${base[@]}" --output "$OUT/pack-shared.safetensors" 2>&1 | tee "$OUT/train-shared.log"
t1=$(date +%s)
accel train-heads "${common[@]}" --own-lm-head --output /root/pack-own.safetensors 2>&1 | tee "$OUT/train-own.log"
t2=$(date +%s)
echo "{\"shared_wall_s\": $((t1 - t0)), \"own_wall_s\": $((t2 - t1))}" > "$OUT/train-walls.json"
python3 scripts/eval_acceptance.py --out "$OUT/acceptance.json" "$OUT/pack-shared.safetensors" /root/pack-own.safetensors
