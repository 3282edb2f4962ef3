#!/usr/bin/env bash
# GPU: issue 12 (sparse prefill speed), one call of about 6-8 minutes on an H200:
# scripts/gpu_sparse_speed.py = selftest (kernels vs fp32 on every pattern, bf16/fp16, D 64/128; fused
# index vs reference; unseen lengths compile nothing), added latency + new Triton binaries at unseen
# prompt lengths (14/2 d=64 and 8B shapes), CUDA-graph capture of the index path, kernels vs cuDNN /
# Flex (our blocks, exactly our keys) at 32K/128K (8B) and 16K/31K (14/2 d=64, config sweep).
# The CPU-interpreter tests (tests/test_vs_fused.py, test_sparse_compile.py, test_kernels.py) need no GPU.
# Writes $OUT/sparse-speed.json; the table comes last.
set -uo pipefail
export PYTHONUNBUFFERED=1
timeout 570 python3 scripts/gpu_sparse_speed.py --out "$OUT/sparse-speed.json" 2>&1 | grep -v "━\|Ignoring" | tail -70
