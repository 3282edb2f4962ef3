#!/usr/bin/env bash
# GPU: the batch-invariant ("exact") decode path. The kernel/generation tests on the real GPU kernels,
# the invariant linear kernel vs cuBLAS on decode shapes, then `accel bench decode` on the real SmolLM2
# over the 24 held-out prompts (modes exact / graph / inductor: tokens/s, Medusa accepted length,
# Medusa == plain and batched == single-prompt token identity) and on the Llama-3-8B shape.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring" | tail -${TAIL:-16}; }
step 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_exact.py ${EXTRA_TESTS:-}
TAIL=24 step 120 python3 scripts/bench_invariant_linear.py --out "$OUT/invariant-linear-h200.json"
step 300 accel bench decode --model smollm2-135m --prompts 24 --json "$OUT/decode-smollm2-exact.json"
step 200 accel bench decode --synthetic llama-3-8b --prompts 2 --max-new-tokens 128 --modes exact,inductor --no-hf --json "$OUT/decode-llama3-8b-exact.json"
