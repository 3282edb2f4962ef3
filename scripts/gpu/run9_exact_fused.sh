#!/usr/bin/env bash
# GPU: after fusing RMSNorm into the invariant linear and moving Medusa's KV in one gather/scatter:
# tests on the GPU kernels, the linear micro-benchmark (current split-K rule), decode on SmolLM2 and the 8B shape.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring" | tail -${TAIL:-16}; }
step 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_exact.py tests/test_medusa.py tests/test_decode.py
TAIL=24 step 120 python3 scripts/bench_invariant_linear.py --out "$OUT/invariant-linear-h200.json"
step 240 accel bench decode --model smollm2-135m --prompts 24 --modes exact,inductor,graph --json "$OUT/decode-smollm2-exact.json"
step 200 accel bench decode --synthetic llama-3-8b --prompts 2 --max-new-tokens 128 --modes exact,inductor --no-hf --json "$OUT/decode-llama3-8b-exact.json"
