#!/usr/bin/env bash
# GPU: exact (fixed-shape) decode/verify steps in bf16 — identical share and speed vs the default steps.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
for e in on off; do
  timeout 150 python3 scripts/eval_acceptance.py --dtype bf16 --exact $e --out "$OUT/acceptance-bf16-exact-$e.json" \
    runtime/default_pack.safetensors 2>&1 | grep -v Ignoring | tail -2
done
timeout 150 accel bench decode --model smollm2-135m --exact --json "$OUT/decode-smollm2-exact.json" 2>&1 | grep -v "━\|Ignoring" | tail -14
timeout 120 accel bench decode --synthetic llama-3-8b --exact --prompts 2 --max-new-tokens 128 --no-hf --json "$OUT/decode-llama3-8b-exact.json" 2>&1 | grep -v "━" | tail -12
