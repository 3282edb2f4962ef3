#!/usr/bin/env bash
# GPU: final figures for the exact (batch-invariant) default: decode on SmolLM2 (24 held-out prompts) and
# the 8B shape, prefill dense / exact / sparse on SmolLM2, and the CLI itself: `accel generate` with and
# without Medusa must print the same text.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring" | tail -${TAIL:-16}; }
step 240 accel bench decode --model smollm2-135m --prompts 24 --json "$OUT/decode-smollm2-exact.json"
step 200 accel bench decode --synthetic llama-3-8b --prompts 2 --max-new-tokens 128 --modes exact,inductor --no-hf --json "$OUT/decode-llama3-8b-exact.json"
step 120 accel bench prefill --model smollm2-135m --lengths 1k,2k,4k,8k --json "$OUT/prefill-smollm2-exact.json"
step 60 accel generate --prompt-file examples/prompts.jsonl --max-new-tokens 128 --output "$OUT/gen-medusa.jsonl" --stats
step 60 accel generate --prompt-file examples/prompts.jsonl --max-new-tokens 128 --no-medusa --output "$OUT/gen-plain.jsonl" --stats
python3 - "$OUT" <<'PY'
import json, sys
a = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-medusa.jsonl")]
b = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-plain.jsonl")]
print("CLI generate, Medusa text == --no-medusa text:", sum(x["text"] == y["text"] for x, y in zip(a, b)), "/", len(a))
PY
