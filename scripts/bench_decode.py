"""Decode benchmark script (HF generate vs plain vs Medusa): see accel.runtime.bench_decode."""
from accel.runtime.bench_decode import main

if __name__ == "__main__":
    main()
