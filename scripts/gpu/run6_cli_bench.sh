#!/usr/bin/env bash
# GPU: the bench subcommands not yet run there through the CLI (kernels, quality), and the
# full 32-layer search timing on the Llama-3-8B-shaped model. Expects /root/smollm2.gguf.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring" | tail -16; }
step 200 accel bench quality --model smollm2-135m --lengths 1k,2k,4k,8k --trials 2 --ppl-length 8k \
  --medusa-prompts 16 --max-new-tokens 128 --json "$OUT/quality-smollm2-h200.json" --plot "$OUT"
step 150 python3 scripts/time_search.py --seq-len 32768 --output "$OUT/search-time-8b-h200.json"
step 200 accel bench kernels --lengths 32k,128k --json "$OUT/kernels-cli-h200.json" --plot "$OUT"
