"""Kernel micro-benchmark (ours vs cuDNN SDPA vs FlexAttention): see accel.bench.kernels.

  PYTHONUNBUFFERED=1 python scripts/bench_kernels.py --selftest --profile-index --out results/kernels-h200.json
"""
from accel.bench.kernels import main

if __name__ == "__main__":
    main()
