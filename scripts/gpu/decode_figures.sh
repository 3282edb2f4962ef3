#!/usr/bin/env bash
# GPU: re-measure docs/results.md's decode figures after the engine redesign (issue 11): the exact-path GPU
# tests, SmolLM2 decode (24 held-out prompts; exact vs graph; Medusa == plain, batched == single), the 8B shape,
# and the CLI's Medusa == --no-medusa text. Expects /root/smollm2.gguf (scripts: ../shared/tools/stage-smollm2).
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring\|Warn" | tail -${TAIL:-14}; }
step 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_exact.py tests/test_decode.py tests/test_medusa.py tests/test_engine.py tests/test_families.py
step 240 accel bench decode --model smollm2-135m --prompts 24 --modes exact,graph --json "$OUT/decode-smollm2-exact.json"
step 150 accel bench decode --synthetic llama-3-8b --prompts 2 --max-new-tokens 128 --modes exact --no-hf --json "$OUT/decode-llama3-8b-exact.json"
step 60 accel generate --prompt-file examples/prompts.jsonl --max-new-tokens 128 --output "$OUT/gen-medusa.jsonl" --stats
step 60 accel generate --prompt-file examples/prompts.jsonl --max-new-tokens 128 --no-medusa --output "$OUT/gen-plain.jsonl" --stats
python3 - "$OUT" <<'PY'
import json, sys
a = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-medusa.jsonl")]
b = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-plain.jsonl")]
print("CLI generate, Medusa text == --no-medusa text:", sum(x["text"] == y["text"] for x, y in zip(a, b)), "/", len(a))
PY
