#!/usr/bin/env bash
# GPU: the decode / prefill / search-time benchmarks behind docs/results.md, each step time-boxed.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring" | tail -14; }
step 150 accel bench decode --model smollm2-135m --json "$OUT/decode-smollm2.json"
step 100 accel bench decode --synthetic llama-3-8b --prompts 2 --max-new-tokens 128 --json "$OUT/decode-llama3-8b.json"
step 60 accel bench prefill --model smollm2-135m --lengths 1k,2k,4k,8k --json "$OUT/prefill-smollm2.json"
step 150 accel bench prefill --synthetic llama-3-8b --lengths 32k,128k --pattern vertical_and_slash:1000:6096 --rep 2 --json "$OUT/prefill-llama3-8b.json"
step 100 python3 scripts/time_search.py --seq-len 32768 --layers 4 --output "$OUT/search-time-8b-4layers.json"
