#!/usr/bin/env bash
# GPU (one call, < 9.5 min): the captured EAGLE step (issue 14). CUDA tests of the step, then train an EAGLE
# draft into a copy of the shipped pack (time-boxed, resumable), then ONE bench: plain exact vs Medusa (shipped
# pack) vs EAGLE (the new pack, two trees) on 12 held-out SmolLM2 prompts: decode-only and wall-clock tok/s,
# tokens/step, identical-to-plain. Brings back $OUT/eagle-pack.safetensors (~10 MB, bf16 draft) and
# $OUT/eagle-bench.json. Expects /root/smollm2.gguf (../shared/tools/stage-smollm2).
# EAGLE_STEPS / EAGLE_MINUTES / EAGLE_RESUME=1 (continue /tmp/eagle.ckpt on the same machine) override.
set -uo pipefail
export ACCEL_SMOLLM2_GGUF=${ACCEL_SMOLLM2_GGUF:-/root/smollm2.gguf} PYTHONUNBUFFERED=1
# `python3 -m` from the repo root would put it on sys.path, where kernels/ shadows Hugging Face's `kernels`
# (transformers >= 5.25 imports it); Python >= 3.11 leaves it off with this set
export PYTHONSAFEPATH=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring\|Warn" | tail -${TAIL:-14}; }
steps=${EAGLE_STEPS:-1200}; minutes=${EAGLE_MINUTES:-3.2}
resume=(); [[ ${EAGLE_RESUME:-0} == 1 ]] && resume=(--resume)
step 80 python3 -m pytest -q -x -p no:cacheprovider tests/test_eagle_graph.py tests/test_eagle_exact.py -k "cuda or exact"
TAIL=6 step 340 accel train-heads --drafter eagle --model smollm2-135m --pack runtime/default_pack.safetensors \
  --output "$OUT/eagle-pack.safetensors" --steps "$steps" --max-minutes "$minutes" --checkpoint-dir /tmp/eagle.ckpt "${resume[@]}"
ls -l "$OUT/eagle-pack.safetensors"
TAIL=12 step 140 python3 -m accel.bench.eagle --pack "$OUT/eagle-pack.safetensors" --prompts 12 --max-new-tokens 256 \
  --tree 8,5,48 --tree 10,6,60 --json "$OUT/eagle-bench.json"
