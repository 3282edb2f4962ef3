#!/usr/bin/env bash
# Session 5's device calls, made back to back (a machine stays warm ~30 s between calls; staged files and
# background jobs live only while it does).
#   bash scripts/gpu/s5.sh q N [last]   carry .stage/pNN (+ .whl for N=1): the Qwen GGUF part N; 1 installs the
#                                       gguf wheel and accel; the last joins the parts and checks the sha256
#   bash scripts/gpu/s5.sh probe        the fidelity A/B (scripts/gpu/qwen_fidelity_probe.py) with a 16K absolute
#                                       search running beside the first variants
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export ACCEL_QWEN_GGUF=/root/stage/qwen.gguf
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
W=/root/work
mkdir -p $W /root/stage
case ${1:?phase} in
q)
  n=$(printf "%02d" "$2"); cp .stage/p$n/* /root/stage/ && echo "part $n ok"
  if [[ $2 == 1 ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || exit 1
  fi
  if [[ ${3:-} == last ]]; then
    cat /root/stage/qwen.gguf.part-* > $ACCEL_QWEN_GGUF && rm /root/stage/qwen.gguf.part-*
    echo "$QWEN_SHA  $ACCEL_QWEN_GGUF" | sha256sum -c || exit 1
  fi ;;
probe)
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
  # the fused prefill elementwise kernels: bit-identity on this GPU and their speed; off if they fail
  if ! timeout 100 python3 scripts/gpu/bench_prefill_fat.py --T 31744 --layers 24 --json $OUT/prefill-fat.json 2>&1 \
       | grep -v Warn | tail -14; then echo "fused prefill kernels failed: ACCEL_FUSED_PREFILL=0"; export ACCEL_FUSED_PREFILL=0; fi
  P=results/qwen2.5-coder-0.5b-patterns-h200-run1.safetensors   # the pack the probe of 2026-12-03 called base
  setsid nohup bash -c "timeout 300 accel search-patterns --model qwen2.5-coder-0.5b --seq-len 16k --budget ${BUDGET:-0.35} \
      --scaling absolute --dense-tail 64 --no-validate --output $W/packA.safetensors > $W/search.log 2>&1; \
      touch $W/packA.safetensors.done" > /dev/null 2>&1 < /dev/null &
  timeout 560 python3 scripts/gpu/qwen_fidelity_probe.py --variant base=$P --variant base+tail=$P:tail=64 \
      --variant wideabs+tail=$W/packA.safetensors --tasks ${TASKS:-niah_multikey_1,vt,cwe,fwe} \
      --lengths ${LENGTHS:-8192,16384} --samples ${SAMPLES:-16} --json $OUT/probe.json --pick $W/chosen.safetensors 2>&1 | grep -v "Warn\|warn\|━"
  grep -v "━" $W/search.log | tail -4; cp $W/packA.safetensors $OUT/ 2>/dev/null ;;
verify)  # the CPU-only merges (hostcost, eagleovh, rulerspeed) on the GPU: their tests, then the index host cost vs the
         # pre-merge kernels (carry .carry/ref = git archive 24824d9 kernels)
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
  timeout 200 python3 -m pytest -q -x tests/test_prefill_sync.py tests/test_vs_fused.py tests/test_index_launch_budget.py \
      tests/test_eagle_graph.py tests/test_request_overhead.py 2>&1 | tail -8
  timeout 150 python3 scripts/gpu/index_host_cost.py --lengths 16384,31744 --ref-dir .carry/ref/kernels \
      --json $OUT/index-host-cost.json 2>&1 | grep -v Warn | tail -20 ;;
final)   # the chosen pack (PACK=...) end to end: prefill speed + threshold, RULER suite, perplexity
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
  PACK=${PACK:?PACK} PHASES_WITH_PACK=speed,suite TOTAL=${TOTAL:-560} bash scripts/gpu/qwen_longctx.sh ;;
eightb)   # 8B shape (8 of 32 layers; ratios hold): time to first token vs its ceiling, A-shape and vertical-slash
  python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
  for pat in stream_llm:1024:4096 vertical_and_slash:1000:6096; do
    timeout 170 python3 scripts/gpu/profile_prefill.py --synthetic llama-3-8b --layers 8 --lengths 32768,131072 --rep 3 \
      --pattern $pat --json $OUT/ttft-8b-${pat%%:*}.json 2>&1 | grep -v Warn | grep "^N=\|GPU busy"
  done
  [[ -n ${SWEEP:-} ]] && timeout 300 python3 scripts/gpu_sparse_speed.py --sweep-only --budget-s ${SWEEP} --out $OUT/sweep.json 2>&1 | tail -20 ;;
*) echo "unknown phase"; exit 2 ;;
esac
