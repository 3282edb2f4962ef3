#!/usr/bin/env bash
# One GPU session in phases, one device call each, made back to back (a machine stays warm ~30 s between
# calls; staged files and background jobs live only as long as the machine). The slow stages overlap:
# while the Qwen GGUF's parts are copied in (CPU only), the sparse-kernel measurement runs in the background
# on the otherwise idle GPU; while the Qwen RULER suite runs (accuracy, not timing), the EAGLE draft trains.
# Timing phases (sparse speed, Qwen prefill speed, decode bench) never share the GPU with another job.
#
#   bash scripts/gpu/session.sh stage1            carry .stage1           (SmolLM2 GGUF, part 1)
#   bash scripts/gpu/session.sh stage2            carry .stage2 .whl      (part 2, gguf wheel, install; starts sparse speed)
#   bash scripts/gpu/session.sh qpart N           carry .stage/pNN        (Qwen GGUF part N; the last joins + checks sha256)
#   bash scripts/gpu/session.sh qwen1             sparse results back; Qwen search + prefill speed + threshold
#   bash scripts/gpu/session.sh qwen2             starts EAGLE training in the background; Qwen RULER suite + perplexity
#   bash scripts/gpu/session.sh eagle             waits for training; captured-step tests; EAGLE/Medusa/plain bench; decode bench
#   bash scripts/gpu/session.sh final             (after stage1/2 + qpart 1-9) Qwen prefill + EAGLE bench re-measure
# Parts are made by: split -b 55m -d -a 2 <qwen.gguf> (see docs/gpu.md).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# `python3 -m` from the repo root would put it on sys.path, where kernels/ shadows Hugging Face's `kernels`
# (transformers >= 5.25 imports it); Python >= 3.11 leaves it off with this set
export PYTHONSAFEPATH=1
export ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf ACCEL_QWEN_GGUF=/root/stage/qwen.gguf
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
W=/root/work
mkdir -p $W /root/stage
phase=${1:?phase}
case $phase in
stage1)
  cp .stage1/* /root/stage/ && echo "stage1 ok" ;;
stage2)
  cp .stage2/* /root/stage/ && cat /root/stage/smollm2.gguf.part-* > /root/smollm2.gguf && rm /root/stage/smollm2.gguf.part-*
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
  [[ -f .carry/eagle-pack.safetensors ]] && cp .carry/eagle-pack.safetensors $W/
  [[ -n ${SKIP_SPARSE:-} ]] && { echo "stage2 ok"; exit 0; }
  setsid nohup bash -c "timeout 420 python3 scripts/gpu_sparse_speed.py --budget-s ${SPARSE_BUDGET:-200} \
      --out $W/sparse-speed.json > $W/sparse.log 2>&1; echo done > $W/sparse.done" > /dev/null 2>&1 < /dev/null &
  nvidia-smi --query-gpu=name,memory.used --format=csv,noheader; echo "stage2 ok; sparse speed started" ;;
qpart)
  n=$(printf "%02d" "$2"); cp .stage/p$n/* /root/stage/ && echo "part $n ok"; tail -2 $W/sparse.log 2>/dev/null
  if [[ ${3:-} == last ]]; then
    cat /root/stage/qwen.gguf.part-* > $ACCEL_QWEN_GGUF && rm /root/stage/qwen.gguf.part-*
    echo "$QWEN_SHA  $ACCEL_QWEN_GGUF" | sha256sum -c || exit 1
  fi ;;
qwen1)
  while [[ ! -f $W/sparse.done ]]; do sleep 2; done
  cp $W/sparse.log $W/sparse-speed.json $OUT/ 2>/dev/null; tail -12 $W/sparse.log
  PHASES=search,speed bash scripts/gpu/qwen_longctx.sh
  cp $OUT/qwen-pack.safetensors $W/ 2>/dev/null; echo "qwen1 done" ;;
qwen2)
  setsid nohup bash -c "timeout 480 accel train-heads --drafter eagle --model smollm2-135m \
      --pack runtime/default_pack.safetensors --output $W/eagle-pack.safetensors --steps ${EAGLE_STEPS:-4000} \
      --max-minutes ${EAGLE_MINUTES:-5.5} --distill-samples ${DISTILL_SAMPLES:-2} --checkpoint-dir $W/eagle.ckpt \
      > $W/train.log 2>&1; echo done > $W/train.done" > /dev/null 2>&1 < /dev/null &
  cp $W/qwen-pack.safetensors $OUT/ 2>/dev/null
  PHASES=suite TOTAL=${SUITE_S:-420} bash scripts/gpu/qwen_longctx.sh; tail -3 $W/train.log ;;
eagle)
  while [[ ! -f $W/train.done ]]; do sleep 2; done
  grep -v "━" $W/train.log | tail -6; cp $W/eagle-pack.safetensors $W/train.log $OUT/
  timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_eagle_graph.py -k cuda 2>&1 | tail -2
  timeout 200 python3 -m accel.bench.eagle --pack $W/eagle-pack.safetensors --prompts 12 --max-new-tokens 256 \
    --tree 8,5,48 --tree 10,6,60 --json $OUT/eagle-bench.json 2>&1 | tail -14
  timeout 100 accel bench decode --model smollm2-135m --prompts 12 --no-hf --modes exact \
    --json $OUT/decode-smollm2-wall.json 2>&1 | tail -8 ;;
final)   # a short re-measure after fixes: Qwen prefill with the committed pack, EAGLE bench with a carried pack
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
  [[ -f .carry/eagle-pack.safetensors ]] && cp .carry/eagle-pack.safetensors $W/
  timeout 170 accel bench prefill --model qwen2.5-coder-0.5b --pack results/qwen2.5-coder-0.5b-patterns-h200.safetensors \
    --lengths ${LENGTHS:-4k,8k,16k,31k} --json $OUT/prefill-qwen.json 2>&1 | grep -v "━" | tail -${TAIL:-12}
  timeout 170 python3 -m accel.bench.eagle --pack $W/eagle-pack.safetensors --prompts 12 --max-new-tokens 256 \
    --tree ${TREE:-8,5,48} --json $OUT/eagle-bench.json 2>&1 | tail -8 ;;
*) echo "unknown phase $phase"; exit 2 ;;
esac
