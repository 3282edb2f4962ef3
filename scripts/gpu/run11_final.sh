#!/usr/bin/env bash
# GPU: final figures with the re-trained default pack (7 sampled answers per prompt, 3000 steps):
# decode (all modes, 24 held-out prompts), tree-size sweep, and the CLI's Medusa == --no-medusa check.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring\|Warn" | tail -${TAIL:-16}; }
step 200 accel bench decode --model smollm2-135m --prompts 24 --modes exact,inductor,graph --json "$OUT/decode-smollm2-exact.json"
step 150 python3 scripts/tree_sweep.py --sizes 15 31 63 127 255 --out "$OUT/tree-sweep-h200.json"
step 60 accel generate --prompt-file examples/prompts.jsonl --max-new-tokens 128 --output "$OUT/gen-medusa.jsonl" --stats
step 60 accel generate --prompt-file examples/prompts.jsonl --max-new-tokens 128 --no-medusa --output "$OUT/gen-plain.jsonl" --stats
python3 - "$OUT" <<'PY'
import json, sys
a = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-medusa.jsonl")]
b = [json.loads(l) for l in open(f"{sys.argv[1]}/gen-plain.jsonl")]
print("CLI generate, Medusa text == --no-medusa text:", sum(x["text"] == y["text"] for x, y in zip(a, b)), "/", len(a))
PY
