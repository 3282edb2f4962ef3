"""Time building the sparse index for every layer of the shipped pack (SmolLM2 shapes, 4096 tokens) on
this machine, random q/k. Used to compare index-builder versions; the last line is JSON.

  .venv/bin/python scripts/time_index_cpu.py [--out results/index-build-cpu.json] [--label NAME]
"""
import argparse
import json
import statistics
import subprocess
import time

import torch

from accel.kernels import build_index
from accel.bench.common import environment
from accel.runtime.pack import load_pack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--label", default="working tree")
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    p = load_pack("runtime/default_pack.safetensors")
    torch.manual_seed(0)
    q, k = torch.randn(1, 9, args.n, 64), torch.randn(1, 3, args.n, 64)
    runs = []
    for _ in range(3):
        ts = []
        for layer in range(len(p.patterns)):
            t = time.perf_counter()
            build_index(q, k, p.layer_patterns(layer))
            ts.append(time.perf_counter() - t)
        runs.append(sum(ts))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    row = {"label": args.label, "git_head": git, "n": args.n, "all_layers_ms_median_of_3": statistics.median(runs) * 1e3}
    print(json.dumps(row))
    if args.out:
        try:
            data = json.load(open(args.out))
        except (OSError, ValueError):
            data = {"env": environment("python scripts/time_index_cpu.py"), "rows": []}
        data["rows"].append(row)
        json.dump(data, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
