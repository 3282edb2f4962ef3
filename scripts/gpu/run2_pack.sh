#!/usr/bin/env bash
# GPU, second pass at the default pack: more self-distilled data (greedy + sampled answers), the
# patterns searched at 95% recall as the base, then acceptance/exactness under three numerics.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
steps=${STEPS:-2500}
t0=$(date +%s)
accel train-heads --model smollm2-135m --pack results/smollm2-patterns-r95.safetensors \
  --output "$OUT/default_pack.safetensors" --steps "$steps" --batch-size 16 --seq-len 512 --lr 1e-3 \
  --num-heads 4 --distill-tokens 512 --distill-batch-size 96 --distill-samples "${SAMPLES:-3}" \
  --checkpoint-every 500 2>&1 | grep -v "━" | tee "$OUT/train-run2.log"
t1=$(date +%s)
echo "{\"train_wall_s\": $((t1 - t0))}" > "$OUT/train-run2-wall.json"
for v in "bf16:" "bf16:--fp32-logits" "fp32:"; do
  dt=${v%%:*}; flag=${v#*:}
  python3 scripts/eval_acceptance.py --dtype "$dt" $flag --out "$OUT/acceptance-$dt${flag:+-fp32logits}.json" \
    "$OUT/default_pack.safetensors" 2>&1 | grep -v Ignoring
done
