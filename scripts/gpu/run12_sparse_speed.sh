#!/usr/bin/env bash
# GPU: issue 12 (sparse prefill speed). The kernel tests on the real GPU kernels (float64 contract,
# fused index == reference, one binary per kernel for all lengths), then scripts/gpu_sparse_speed.py:
# selftest, added latency + new Triton binaries at unseen prompt lengths (14/2 d=64 and 8B shapes),
# CUDA-graph capture of the fused index path, kernels vs cuDNN / Flex (blocks, exact keys) at 32K/128K
# (8B) and 16K/31K (14/2 d=64, config sweep). Writes $OUT/sparse-speed.json; table last.
set -uo pipefail
export PYTHONUNBUFFERED=1
step() { local t=$1; shift; echo "== $*"; timeout "$t" "$@" 2>&1 | grep -v "━\|Ignoring" | tail -${TAIL:-16}; }
step 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py tests/test_vs_fused.py tests/test_sparse_compile.py
TAIL=60 step 430 python3 scripts/gpu_sparse_speed.py --out "$OUT/sparse-speed.json"
