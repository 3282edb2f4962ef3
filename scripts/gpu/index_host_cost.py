"""Host (launch) cost of one layer's sparse-prefill index on CUDA, for every layer of a pack (GPU).

For each prompt length and each layer of the pack (patterns scaled to the length as the runtime does),
on random q/k/v of the model's attention shape (Qwen2.5-Coder-0.5B: 14 q / 2 kv heads, head_dim 64,
bf16, laid out as the runtime's projections leave them):

- host: wall time of queueing one call with the GPU idle, before synchronising (median of --rep): what
  the CPU pays per layer, for the index alone (build_index) and for index + kernel (sparse_attention);
- graph: the same call replayed as one CUDA graph (CUDA events, median): the GPU work without launch
  gaps;
- launches: CUDA launch calls (cudaLaunchKernel, cuLaunchKernelEx, ...) and copies/memsets per call
  (torch.profiler), and the GPU time of the layer's kernels by name for the first layer.

    python scripts/gpu/index_host_cost.py --pack results/qwen2.5-coder-0.5b-patterns-h200.safetensors \\
        --lengths 16384,31744 [--ref-dir /tmp/ref/kernels] [--json out.json]

--ref-dir: another revision's kernels/ package (git archive main kernels | tar -x -C /tmp/ref), measured
side by side in the same process; its index must equal ours bit for bit (the "same" column).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict

import torch

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
COPY_CALLS = ("cudaMemcpyAsync", "cudaMemsetAsync", "cudaMemcpy")


def load_kernels(ref_dir: str | None):
    """Our accel.kernels, or a copy of another revision's kernels/ as the package `refkernels` (kernels
    imports nothing of ours but itself, so any revision loads standalone)."""
    if ref_dir is None:
        import accel.kernels as ours
        return ours
    ref_dir = os.path.abspath(ref_dir)
    spec = importlib.util.spec_from_file_location("refkernels", os.path.join(ref_dir, "__init__.py"),
                                                  submodule_search_locations=[ref_dir])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["refkernels"] = mod
    spec.loader.exec_module(mod)
    return mod


def host_ms(fn, rep: int) -> float:
    """Median wall time of queueing fn() with the GPU idle (synchronised before and after)."""
    ts = []
    for _ in range(rep):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        ts.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        del out
    return statistics.median(ts)


def graph_ms(fn, rep: int) -> float:
    """Median replay time of fn() captured as one CUDA graph (warmed up on a side stream first)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    ts = []
    for _ in range(rep + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    del g, out
    return statistics.median(ts[2:])


def launches(fn, kernel_times: bool = False):
    """(launch calls, copy/memset calls, {kernel: GPU ms} or None) of one fn() call."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    calls = Counter(e.name for e in prof.events() if e.name in LAUNCH_CALLS + COPY_CALLS)
    times = None
    if kernel_times:
        times = defaultdict(float)
        for e in prof.key_averages():
            dev_us = getattr(e, "self_device_time_total", None)
            if dev_us is None:
                dev_us = getattr(e, "self_cuda_time_total", 0.0)
            if dev_us and e.device_type == torch.autograd.DeviceType.CUDA:
                times[e.key[:60]] += dev_us / 1e3
    return sum(calls[c] for c in LAUNCH_CALLS), sum(calls[c] for c in COPY_CALLS), times


def same_index(a, b) -> bool:
    fields = ("block_count", "block_offset", "column_count", "column_index")
    return all(getattr(a, f).shape == getattr(b, f).shape and torch.equal(getattr(a, f), getattr(b, f))
               for f in fields) and a.dense_head_ids == b.dense_head_ids


def kinds(pats) -> str:
    c = Counter({"vertical_and_slash": "vs", "stream_llm": "a", "block_sparse": "bs", "dense": "d"}.get(p.name, p.name)
                for p in pats)
    return " ".join(f"{k}{n}" for k, n in sorted(c.items()))


def measure(K, pats, q, k, v, rep: int, kernel_times: bool):
    pats = [K.HeadPattern(*p.to_list()) for p in pats]   # this revision's own value objects, as the runtime
    bm, bn = K.attention.default_blocks(K.attention.normalize_patterns(pats, q.shape[1]), q)
    index = lambda: K.build_index(q, k, pats, bm, bn)   # noqa: E731
    layer = lambda: K.sparse_attention(q, k, v, pats)   # noqa: E731
    layer()   # compile / warm caches
    torch.cuda.synchronize()
    row = dict(blocks=f"{bm}x{bn}", host_index_ms=host_ms(index, rep), host_layer_ms=host_ms(layer, rep),
               graph_index_ms=graph_ms(index, rep), graph_layer_ms=graph_ms(layer, rep))
    row["launches_index"], row["copies_index"], _ = launches(index)
    row["launches_layer"], row["copies_layer"], times = launches(layer, kernel_times)
    if times:
        row["gpu_kernels_ms"] = dict(sorted(times.items(), key=lambda kv: -kv[1]))
    return row, index()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", default="results/qwen2.5-coder-0.5b-patterns-h200.safetensors")
    ap.add_argument("--lengths", default="16384,31744")
    ap.add_argument("--layers", default=None, help="comma-separated layer numbers (default: all)")
    ap.add_argument("--heads", default="14,2,64", help="query heads, kv heads, head_dim")
    ap.add_argument("--rep", type=int, default=7)
    ap.add_argument("--ref-dir", default=None, help="another revision's kernels/ to compare with")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")

    from accel.runtime.pack import load_pack
    from accel.runtime.prefill import layer_patterns

    ours, ref = load_kernels(None), (load_kernels(a.ref_dir) if a.ref_dir else None)
    hq, hkv, d = (int(x) for x in a.heads.split(","))
    pack = load_pack(a.pack)
    dev = torch.device("cuda")
    rows = []
    for n in (int(x) for x in a.lengths.split(",")):
        layers = layer_patterns(pack, n)
        pick = range(len(layers)) if a.layers is None else [int(x) for x in a.layers.split(",")]
        g = torch.Generator(device=dev).manual_seed(n)
        # the runtime's layout: q, k (B, H, N, D) views of the (B, N, H, D) projections
        qk = torch.randn(1, n, hq + hkv, d, device=dev, dtype=torch.bfloat16, generator=g)
        q, k = qk[:, :, :hq].transpose(1, 2), qk[:, :, hq:].transpose(1, 2)
        v = torch.randn(1, n, hkv, d, device=dev, dtype=torch.bfloat16, generator=g).transpose(1, 2)
        print(f"\nN={n}  (host/graph ms per layer; launches = CUDA launch calls per call, copies = memcpy/memset)")
        head = f"{'layer':>5} {'kinds':<14} {'host idx':>8} {'host lay':>8} {'graph idx':>9} {'graph lay':>9} " \
               f"{'launch idx':>10} {'launch lay':>10} {'copies':>6}"
        if ref is not None:
            head += f" | {'ref host lay':>12} {'ref graph lay':>13} {'ref launch':>10} {'ref copies':>10} {'same':>5}"
        print(head)
        for li in pick:
            pats = layers[li]
            row, idx = measure(ours, pats, q, k, v, a.rep, kernel_times=li == pick[0])
            row.update(length=n, layer=li, kinds=kinds(pats))
            line = (f"{li:>5} {row['kinds']:<14} {row['host_index_ms']:8.2f} {row['host_layer_ms']:8.2f} "
                    f"{row['graph_index_ms']:9.3f} {row['graph_layer_ms']:9.3f} {row['launches_index']:10d} "
                    f"{row['launches_layer']:10d} {row['copies_layer']:6d}")
            if ref is not None:
                rrow, ridx = measure(ref, pats, q, k, v, a.rep, kernel_times=li == pick[0])
                row["ref"] = rrow
                row["same_index"] = same_index(idx, ridx)
                line += (f" | {rrow['host_layer_ms']:12.2f} {rrow['graph_layer_ms']:13.3f} "
                         f"{rrow['launches_layer']:10d} {rrow['copies_layer']:10d} {str(row['same_index']):>5}")
            print(line, flush=True)
            rows.append(row)
        mine = [r for r in rows if r["length"] == n]
        tot = {key: sum(r[key] for r in mine) for key in ("host_index_ms", "host_layer_ms", "graph_index_ms",
                                                           "graph_layer_ms", "launches_layer", "copies_layer")}
        line = (f"{'sum':>5} {len(mine):>2} layers{'':<5} {tot['host_index_ms']:8.1f} {tot['host_layer_ms']:8.1f} "
                f"{tot['graph_index_ms']:9.2f} {tot['graph_layer_ms']:9.2f} {'':>10} {tot['launches_layer']:10d} "
                f"{tot['copies_layer']:6d}")
        if ref is not None:
            line += (f" | {sum(r['ref']['host_layer_ms'] for r in mine):12.1f} "
                     f"{sum(r['ref']['graph_layer_ms'] for r in mine):13.2f} "
                     f"{sum(r['ref']['launches_layer'] for r in mine):10d} "
                     f"{sum(r['ref']['copies_layer'] for r in mine):10d} {str(all(r['same_index'] for r in mine)):>5}")
        print(line)
        first = mine[0]
        for who, r in (("ours", first), ("ref", first.get("ref"))):
            if r and r.get("gpu_kernels_ms"):
                top = list(r["gpu_kernels_ms"].items())[:8]
                print(f"  GPU kernels of layer {first['layer']} ({who}): " + ", ".join(f"{k} {t:.3f}" for k, t in top))
        del q, k, v, qk
        torch.cuda.empty_cache()
    if a.json:
        from accel.bench.common import environment
        with open(a.json, "w") as f:
            json.dump({"env": environment("python scripts/gpu/index_host_cost.py " + " ".join(sys.argv[1:])),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
