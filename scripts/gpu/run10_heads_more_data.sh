#!/usr/bin/env bash
# GPU: do more self-distilled answers per prompt make better heads? Train the shipped pack's recipe with
# --distill-samples 7 (vs 3) and 3000 steps (vs 2500), then measure acceptance / speed on the exact path.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
t0=$(date +%s)
timeout 460 accel train-heads --model smollm2-135m --pack results/smollm2-patterns-r95.safetensors \
  --output "$OUT/pack-s10.safetensors" --steps "${STEPS:-3000}" --batch-size 16 --seq-len 512 --lr 1e-3 \
  --num-heads 4 --distill-tokens 512 --distill-batch-size 128 --distill-samples "${SAMPLES:-7}" \
  --checkpoint-every 1000 2>&1 | grep -v "━" | tail -12 | tee "$OUT/train-s10.log"
echo "{\"train_wall_s\": $(( $(date +%s) - t0 ))}" > "$OUT/train-s10-wall.json"
timeout 110 python3 scripts/tree_sweep.py --sizes 63 --pack "$OUT/pack-s10.safetensors" --out "$OUT/tree-sweep-s10-h200.json" 2>&1 | grep -v Warn | tail -4
