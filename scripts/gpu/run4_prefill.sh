#!/usr/bin/env bash
# GPU: end-to-end prefill (time to first token) on the Llama-3-8B-shaped random-weight model, for each
# pattern family at the sizes. No model staging needed.
set -uo pipefail
export PYTHONUNBUFFERED=1
for p in stream_llm:1024:4096 block_sparse:64:0 vertical_and_slash:1000:6096; do
  timeout 170 accel bench prefill --synthetic llama-3-8b --lengths 32k,128k --pattern "$p" --rep 2 \
    --json "$OUT/prefill-llama3-8b-${p%%:*}.json" 2>&1 | grep -v "━" | tail -8
done
