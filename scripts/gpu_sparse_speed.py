"""Issue 12 on one GPU, one command: sparse prefill speed, index share, compiles per prompt length.

  PYTHONUNBUFFERED=1 python scripts/gpu_sparse_speed.py            # ~6-9 min on an H200
  python scripts/gpu_sparse_speed.py --quick                       # no selftest, no Flex, fewer configs

Writes $OUT/sparse-speed.json (or --out) and prints a short table last.  Parts:
  1. selftest: kernels vs fp32 masked reference (bf16/fp16, D 64/128, all patterns), fused index ==
     reference index in fp32, fused/reference choice agreement in bf16.
  2. new prompt lengths in a running process (Qwen2.5-0.5B-class heads: 14 q / 2 kv, d=64, and the 8B
     shape): after one warm-up length, each unseen length's first call vs its second call (the
     difference is what a new length adds before the first token; target < 50 ms), and the number of
     Triton binaries of every sparse-path kernel before/after (must not grow).
  3. CUDA graph: build_index (fused vertical-slash) + kernel captured once and replayed; replay output
     == eager output (proves the index path has no host sync).
  4. `bench kernels` rows: 8B shape (32 q / 8 kv, d=128) at 32K and 128K, vertical-slash 1000/6096,
     with Flex on our blocks and on exactly our keys; 14/2 d=64 at 16K and 31K with a config sweep
     (paste the best rows into kernels/triton_sparse.py KERNEL_CONFIGS; the d=64 defaults since issue 12
     are 128x64 w4 s3).  Part 2 also re-runs the mixed layer with cuDNN first for its dense heads
     (dense_backend "cudnn", full run only): its added ms vs the default (flash) row is the plan build.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from accel.bench import kernels as bk
from accel.kernels import HeadPattern, build_index, sparse_attention
from accel.kernels.triton_sparse import sparse_attention_triton

binaries = bk.sparse_binaries


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def new_lengths(shape, pats_name, lengths, log, dense_backend=None):
    """`dense_backend` ("flash"/"cudnn"): SDPA backend tried first for a mixed layer's dense heads
    (kernels/dense.py; flash is the default since issue 12: cuDNN builds a plan per unseen length)."""
    b, hq, hkv, d = shape
    if dense_backend:
        os.environ["ACCEL_DENSE_HEADS_BACKEND"] = dense_backend
    mix = [HeadPattern("vertical_and_slash", 1000, 2048), HeadPattern("stream_llm", 128, 2048),
           HeadPattern("block_sparse", 8), HeadPattern("vertical_and_slash", 300, 500)]
    pats = {"vertical_and_slash": [HeadPattern("vertical_and_slash", 1000, 2048)] * hq,
            "mixed": (mix * hq)[:hq - 1] + [HeadPattern("dense")]}[pats_name]
    rows = []
    for i, n in enumerate(lengths):
        q = torch.randn(b, hq, n, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16)
        before = binaries()
        first = timed(lambda: sparse_attention(q, k, v, pats))
        second = min(timed(lambda: sparse_attention(q, k, v, pats)) for _ in range(3))
        after = binaries()
        row = {"shape": list(shape), "patterns": pats_name, "dense_backend": dense_backend, "n": n, "warmup": i == 0, "first_ms": first,
               "warm_ms": second, "added_ms": first - second,
               "new_binaries": {k_: (after[k_] or 0) - (before[k_] or 0) for k_ in after}}
        rows.append(row)
        log(f"  {pats_name}{'/' + dense_backend if dense_backend else ''} {shape} N={n}{' (warm-up)' if i == 0 else ''}: first {first:.1f} ms, warm {second:.1f} ms, "
            f"added {first - second:.1f} ms, new binaries {sum(row['new_binaries'].values())}", flush=True)
    os.environ.pop("ACCEL_DENSE_HEADS_BACKEND", None)
    return rows


def graph_check(log):
    """Capture index build + kernel in one CUDA graph (after a warm-up call), replay, compare with eager.
    Two layers: all heads vertical-slash (the fused path), and mixed budgets + A-shape + block-sparse."""
    q = torch.randn(1, 14, 20000, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 20000, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 2, 20000, 64, device="cuda", dtype=torch.bfloat16)
    layers = {"vertical_slash": ([HeadPattern("vertical_and_slash", 1000, 2048)] * 14, (128, 128)),
              "mixed": (([HeadPattern("vertical_and_slash", 1000, 2048), HeadPattern("vertical_and_slash", 300, 700),
                          HeadPattern("stream_llm", 128, 2048), HeadPattern("block_sparse", 12)] * 4)[:14], (128, 64))}
    out_rec = {}
    for name, (pats, (bm, bn)) in layers.items():
        try:
            run = lambda: sparse_attention_triton(q, k, v, build_index(q, k, pats, bm, bn))
            eager = run()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                run()                                                 # warm-up on the capture stream
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = run()
            g.replay()
            torch.cuda.synchronize()
            same = bool(torch.equal(out, eager))
            replay = timed(g.replay)
            eager_ms = timed(run)
            out_rec[name] = {"captured": True, "replay_equals_eager": same, "replay_ms": replay, "eager_ms": eager_ms}
        except Exception as e:
            out_rec[name] = {"captured": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        log(f"  CUDA graph, {name} layer: {out_rec[name]}", flush=True)
    return out_rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "results"), "sparse-speed.json"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    log = lambda *a, **k: print(*a, **{"flush": True, **k})
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.time()

    def save():
        res["wall_s"] = time.time() - t0
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    if not args.quick:
        log("== selftest")
        res["selftest_worst_rel_err"] = bk.selftest()
        save()
    log("== new prompt lengths in one process")
    res["new_lengths"] = []
    for shape, lens in (((1, 14, 2, 64), (5000, 5731, 6007, 7413, 31001)),
                        ((1, 32, 8, 128), (8192, 8777, 9001, 12345))):
        for name in ("vertical_and_slash", "mixed"):
            res["new_lengths"] += new_lengths(shape, name, lens, log)
            save()
        if not args.quick:   # the cause, measured: the same mixed layer with cuDNN first for its dense heads
            res["new_lengths"] += new_lengths(shape, "mixed", tuple(x + 1 for x in lens), log, dense_backend="cudnn")
            save()
    res["binaries_total"] = binaries()
    log("== CUDA graph capture of the index path")
    try:
        res["graph"] = graph_check(log)
    except Exception as e:
        res["graph"] = {"captured": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        log(f"  CUDA graph capture failed: {res['graph']['error']}")
    save()
    log("== kernels")
    tables = []
    runs = [((1, 32, 8, 128), [32768, 131072], "128x128w8s3,128x64w8s3", not args.quick),
            ((1, 14, 2, 64), [16384, 31744],
             "128x64w4s3" if args.quick else "128x128w8s3,128x128w4s3,128x64w4s3,128x64w4s2,128x64w8s3,64x64w4s3",
             False)]
    res["kernels"] = []
    for shape, sizes, configs, flex in runs:
        meta, results, table = bk.run_kernel_bench(sizes, ["vertical_and_slash"], configs, reps=5, use_flex=flex,
                                                   profile_index=True, shape=shape, log=log)
        res["kernels"] += results
        tables.append((shape, table))
        save()
    # ---- short table last
    log("\nnew prompt lengths (after one warm-up length): added ms before the first token, new Triton binaries")
    for r in res["new_lengths"]:
        if not r["warmup"]:
            log(f"  {str(r['shape']):>16} {r['patterns'] + '/' + (r.get('dense_backend') or 'default'):>26} N={r['n']:>6} added {r['added_ms']:7.1f} ms  "
                f"binaries +{sum(r['new_binaries'].values())}")
    log(f"graph: {res['graph']}")
    for shape, table in tables:
        bk.print_table(f"{res['device']} shape {shape}", table, log=log)
    save()
    log(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
