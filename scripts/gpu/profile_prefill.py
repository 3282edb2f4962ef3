"""Where a long prefill's time goes, dense vs sparse, on a random-weight model of a real shape (GPU).

Answers three questions the TTFT figures raise, for each length:
- how much of the sparse prefill is the GPU busy, and what the CPU (launch) side costs: the sparse
  path is launch-heavy (index estimation is ~15-60 launches per layer), so on a small model the GPU can
  sit idle while Python queues work;
- which kernels the GPU spends its time in (attention vs GEMMs vs the non-attention "fat": norms, RoPE,
  copies, cache writes), which sets the ceiling sparse attention can reach;
- how the runtime's plan (plan-time dense fallback, no host sync) compares with the density-checked
  plan (``PrefillPlan(patterns)``: one host sync per layer) that ``bench prefill`` used to time.

    python scripts/gpu/profile_prefill.py --synthetic qwen2.5-coder-0.5b \
        --pack results/qwen2.5-coder-0.5b-patterns-h200.safetensors --lengths 16384,31744 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch


def _bucket(name: str) -> str:
    n = name.lower()
    for key, label in (("_sparse_attn", "sparse attn kernel"), ("flash", "dense attn"), ("cudnn", "dense attn"),
                       ("fmha", "dense attn"), ("sdpa", "dense attn"), ("gemm", "gemm"), ("nvjet", "gemm"),
                       ("cutlass", "gemm"), ("sm90", "gemm"), ("_vs_", "index"), ("_scores", "index"),
                       ("_block", "index"), ("_slash", "index"), ("_vertical", "index"), ("topk", "index topk/sort"),
                       ("sort", "index topk/sort"), ("radix", "index topk/sort"), ("scan", "index topk/sort"),
                       ("index_put", "copy/index"), ("copy", "copy/index"), ("cat", "copy/index"),
                       ("gather", "copy/index"), ("index", "copy/index"), ("reduce", "reduce/norm"),
                       ("norm", "reduce/norm"), ("mean", "reduce/norm"), ("pow", "elementwise"),
                       ("elementwise", "elementwise"), ("vectorized", "elementwise"), ("silu", "elementwise")):
        if key in n:
            return label
    return "other"


def profile(fn, steps: int = 2):
    from torch.profiler import ProfilerActivity, profile as tprof

    fn()
    torch.cuda.synchronize()
    with tprof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    kernels, buckets, cpu_ops = defaultdict(float), defaultdict(float), defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        dev_us = getattr(e, "self_device_time_total", None)
        if dev_us is None:
            dev_us = getattr(e, "self_cuda_time_total", 0.0)
        if dev_us and e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.key] += dev_us / steps / 1e3
            buckets[_bucket(e.key)] += dev_us / steps / 1e3
        elif e.device_type == torch.autograd.DeviceType.CPU:
            cpu_ops[e.key][0] += e.self_cpu_time_total / steps / 1e3
            cpu_ops[e.key][1] += e.count // steps
    top_k = sorted(kernels.items(), key=lambda kv: -kv[1])[:12]
    top_cpu = sorted(cpu_ops.items(), key=lambda kv: -kv[1][0])[:14]
    return dict(gpu_busy_ms=sum(kernels.values()), buckets=dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
                top_kernels=top_k, top_cpu_ops=[(k, v[0], v[1]) for k, v in top_cpu],
                cpu_self_ms=sum(v[0] for v in cpu_ops.values()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic", default="qwen2.5-coder-0.5b")
    ap.add_argument("--pack", default=None, help="patterns from this pack (else --pattern for every head)")
    ap.add_argument("--pattern", default="vertical_and_slash:1000:6096")
    ap.add_argument("--layers", type=int, default=None, help="use only this many layers (the ratios hold)")
    ap.add_argument("--lengths", default="16384,31744")
    ap.add_argument("--rep", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from accel.bench.common import environment, time_ms
    from accel.bench.synthetic import build_synthetic
    from accel.runtime.attention_meta import AttentionMeta
    from accel.runtime.model import CompactLM
    from accel.runtime.pack import load_pack
    from accel.runtime.prefill import PrefillPlan, layer_patterns, plan_prefill

    lens = [int(x) for x in a.lengths.split(",")]
    hf = build_synthetic(a.synthetic, max_position_embeddings=max(lens) + 64, num_hidden_layers=a.layers)
    m = CompactLM.from_hf(hf)
    del hf
    m.setup_cache(1, max(lens) + 1)
    pack = load_pack(a.pack) if a.pack else None
    if pack is None:
        from accel.bench.prefill import uniform_patterns

        name, s1, s2 = a.pattern.split(":")
        fixed = uniform_patterns(len(m.layers), m.n_head, name, int(s1), int(s2))
    dev = m.device
    rows = []
    for n in lens:
        ids = torch.randint(0, m.vocab_size, (1, n), device=dev)
        pos = torch.arange(n, device=dev)[None]

        def run(plan):
            return m(ids, AttentionMeta.prompt(pos, plan), last_only=True)

        if pack is not None:
            t0 = time.perf_counter()
            plan = plan_prefill(pack, n, dev, override=1)
            plan_ms = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            plan_prefill(pack, n, dev, override=1)
            plan2_ms = (time.perf_counter() - t0) * 1e3
            checked = PrefillPlan(layer_patterns(pack, n))   # density-checked: a host sync per layer
        else:
            plan, plan_ms, plan2_ms = PrefillPlan(fixed, dense_above=None), 0.0, 0.0
            checked = PrefillPlan(fixed)
        row = dict(length=n, plan_ms=plan_ms, plan_again_ms=plan2_ms,
                   dense_layers_in_plan=sum(p is None for p in plan.patterns) if plan.sparse else None)
        row["dense_ms"] = time_ms(lambda: run(PrefillPlan()), warmup=2, rep=a.rep, device=dev)
        row["sparse_runtime_ms"] = time_ms(lambda: run(plan), warmup=2, rep=a.rep, device=dev)
        row["sparse_checked_ms"] = time_ms(lambda: run(checked), warmup=2, rep=a.rep, device=dev)
        # host-side cost alone: wall time of queueing one prefill without waiting for the GPU
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(plan)
        row["sparse_host_queue_ms"] = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        row["profile_dense"] = profile(lambda: run(PrefillPlan()))
        row["profile_sparse"] = profile(lambda: run(plan))
        rows.append(row)
        print(f"N={n}: plan {plan_ms:.1f} ms (again {plan2_ms:.1f}), dense {row['dense_ms']:.1f}, sparse runtime "
              f"{row['sparse_runtime_ms']:.1f}, sparse checked {row['sparse_checked_ms']:.1f}, host queue "
              f"{row['sparse_host_queue_ms']:.1f} ms", flush=True)
        for mode in ("dense", "sparse"):
            p = row[f"profile_{mode}"]
            print(f"  {mode}: GPU busy {p['gpu_busy_ms']:.1f} ms, CPU self {p['cpu_self_ms']:.1f} ms; "
                  + ", ".join(f"{k} {v:.1f}" for k, v in p["buckets"].items()))
            for k, v in p["top_kernels"][:8]:
                print(f"    gpu {v:7.2f} ms  {k[:100]}")
            for k, v, c in p["top_cpu_ops"][:10]:
                print(f"    cpu {v:7.2f} ms  x{c:<5d} {k[:80]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": environment("python scripts/gpu/profile_prefill.py " + " ".join(
                f"--{k} {v}" for k, v in vars(a).items() if v is not None)), "model": a.synthetic, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
