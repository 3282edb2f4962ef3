"""Time the batch-invariant linear kernel against cuBLAS (F.linear) on decode shapes.

For each weight shape of a model (Llama-3-8B and SmolLM2-135M by default) and M = 1 (decode step)
and 64 (Medusa verify): cuBLAS, our kernel with its default split-K, and each split in --splits.
Reports microseconds and the weight-streaming bandwidth (weight bytes / time).

  python scripts/bench_invariant_linear.py --out results/invariant-linear-h200.json
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from accel.kernels.invariant_linear import _launch, _num_sms, _tiles, linear, linear_silu_mul
from accel.bench.common import environment, write_json

SHAPES = {  # name: (N, K, silu_mul)
    "llama-3-8b": [("qkv", 6144, 4096, False), ("o", 4096, 4096, False), ("gate_up", 14336, 4096, True),
                   ("down", 4096, 14336, False), ("lm_head", 128256, 4096, False)],
    "smollm2-135m": [("qkv", 960, 576, False), ("o", 576, 576, False), ("gate_up", 1536, 576, True),
                     ("down", 576, 1536, False), ("lm_head", 49152, 576, False)],
}


def bench(fn, reps=50):
    for _ in range(3):
        fn()
    g = torch.cuda.CUDAGraph()  # graph-captured like the decode step, so launch overhead is what it is there
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps  # us


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(SHAPES))
    ap.add_argument("--splits", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--rows", type=int, nargs="*", default=[1, 64])
    ap.add_argument("--tile-rows", type=int, nargs="*", default=[32, 64],
                    help="also time these row-tile sizes (the shipped kernel uses 16 for every M)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    env = environment(" ".join(["scripts/bench_invariant_linear.py"] + (argv or sys.argv[1:])))
    dev, dt = torch.device("cuda"), torch.bfloat16
    rows = []
    for model in args.models:
        for name, N, K, silu in SHAPES[model]:
            w = torch.randn(2 * N if silu else N, K, device=dev, dtype=dt) / K ** 0.5
            wbytes = w.numel() * w.element_size()
            for M in args.rows:
                x = torch.randn(M, K, device=dev, dtype=dt)
                if silu:
                    ref = lambda: (lambda gu: F.silu(gu[:, :N]) * gu[:, N:])(F.linear(x, w))
                    ours = lambda s=None: linear_silu_mul(x, w, split_k=s)
                else:
                    ref = lambda: F.linear(x, w)
                    ours = lambda s=None: linear(x, w, split_k=s)
                r = dict(model=model, weight=name, N=N, K=K, M=M, weight_mb=wbytes / 2**20,
                         default_split=_tiles(N, K, _num_sms(dev))[2], cublas_us=bench(ref))
                r["ours_us"] = bench(ours)
                for s in args.splits:
                    r[f"split{s}_us"] = bench(lambda: ours(s))
                for bm in args.tile_rows:
                    r[f"bm{bm}_us"] = bench(lambda: _launch(x, w, None, None, silu, None, bm))
                r["cublas_gbs"] = wbytes / r["cublas_us"] / 1e3
                r["ours_gbs"] = wbytes / r["ours_us"] / 1e3
                rows.append(r)
                print(f"{model:13s} {name:8s} M={M:3d} cuBLAS {r['cublas_us']:8.1f} us ({r['cublas_gbs']:6.0f} GB/s)  "
                      f"ours[split {r['default_split']}] {r['ours_us']:8.1f} us ({r['ours_gbs']:6.0f} GB/s)  "
                      + " ".join(f"s{s}={r[f'split{s}_us']:.1f}" for s in args.splits)
                      + " " + " ".join(f"bm{b}={r[f'bm{b}_us']:.1f}" for b in args.tile_rows), flush=True)
    write_json(args.out, {**env, "results": rows})


if __name__ == "__main__":
    main()
