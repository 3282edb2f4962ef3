"""Decode benchmark script (HF generate vs plain vs Medusa): see accel.bench.decode."""
from accel.bench.decode import main

if __name__ == "__main__":
    main()
