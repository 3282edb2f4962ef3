#!/usr/bin/env bash
# GPU (issue 15): the RULER-style suite, dense vs sparse forced at every length, on the 32K model and the default.
#   scripts/gpu/ruler.sh probe | qwen-4k-8k | qwen-16k | qwen-31k | smollm2      (one device call each, < 10 min)
# Needs the Qwen GGUF staged (../shared/tools/stage-file ~/.cache/accel/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf) and
# the gguf wheel installed; PACK=<Qwen patterns pack> (without one every head gets vertical_and_slash:1000:6096, which
# keeps everything at 4K-8K). Run `probe` first: its rows' wall_s say how many --samples fit a call at 31K.
set -uo pipefail
export ACCEL_QWEN_GGUF=${ACCEL_QWEN_GGUF:-/root/stage/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf} PYTHONUNBUFFERED=1
Q=(--model qwen2.5-coder-0.5b ${PACK:+--pack "$PACK"})
S=${SAMPLES:-50}
run() { timeout 570 accel bench quality --suite ruler "$@" 2>&1 | grep -v "━" | tail -${TAIL:-30}; }
case ${1:?usage: ruler.sh probe|qwen-4k-8k|qwen-16k|qwen-31k|smollm2} in
  probe)      run "${Q[@]}" --lengths 31k --samples 8 --tasks niah_single_1,niah_multikey_3,cwe --ppl-length 31k --json "$OUT/ruler-probe.json" ;;
  qwen-4k-8k) run "${Q[@]}" --lengths 4k,8k --samples "$S" --ppl-length 8k --json "$OUT/ruler-qwen2.5-coder-0.5b-h200-4k-8k.json" --plot "$OUT/img-qwen-4k-8k" ;;
  qwen-16k)   run "${Q[@]}" --lengths 16k --samples "$S" --ppl-length 16k --json "$OUT/ruler-qwen2.5-coder-0.5b-h200-16k.json" --plot "$OUT/img-qwen-16k" ;;
  qwen-31k)   run "${Q[@]}" --lengths 31k --samples "$S" --ppl-length 31k --json "$OUT/ruler-qwen2.5-coder-0.5b-h200-31k.json" --plot "$OUT/img-qwen-31k" ;;
  smollm2)    run --model smollm2-135m --lengths 4k,6k,8000 --samples "$S" --ppl-length 8000 --json "$OUT/ruler-smollm2-135m-h200.json" --plot "$OUT/img-smollm2" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
