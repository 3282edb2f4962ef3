"""GPU benchmark: sparse prefill kernels vs cuDNN SDPA and FlexAttention (Llama-3-8B attention shape).

  accel bench kernels --lengths 32k,128k,256k --json results/kernels.json
  PYTHONUNBUFFERED=1 python scripts/bench_kernels.py --selftest --profile-index --out results/kernels-h200.json

Shape: B=1, 32 query heads, 8 kv heads, d=128, bf16, causal.  For every N and pattern:
  * cuDNN SDPA dense (sdpa_kernel([CUDNN_ATTENTION]), enable_gqa=True)
  * ours: index build (online estimation included) + one Triton launch; kernel alone; index alone;
    several kernel configs (BLOCK_M/BLOCK_N/num_warps/num_stages), best reported
  * FlexAttention (compiled) on a BlockMask made from OUR kept blocks (128-aligned superset, causal
    mask_mod on diagonal blocks; vertical-slash's gathered single columns are NOT given to Flex, which
    cannot gather columns — that favours Flex)
  * correctness at full size: our output vs the fp32 reference on sampled query blocks (all heads)
Inputs: random normal q/k/v with a planted vertical-slash structure in the estimation window: the last 64
queries see the 6160 nearest keys (+6 logits) and 1000 random "hitter" keys (+7.5 logits), so the online
estimation finds a band of slashes and scattered verticals, as in real long-context heads.  The kernel's
speed depends only on the index it is given, which is reported (density = computed tiles / dense tiles).
Timing: CUDA events, median of repeats after warm-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ..kernels import HeadPattern, build_index, get_pattern, kernel_cost
from ..kernels.patterns import VerticalSlash
from ..kernels.index import kept_mask
from ..kernels.reference import _attend_rows
from ..kernels.triton_sparse import sparse_attention_triton

B, HQ, HKV, D = 1, 32, 8, 128


def cuda_time(fn, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts), ts


def make_inputs(n, seed=0, v_cols=1000, band=6160):
    """Random q/k/v (std 0.5 -> logit noise std 0.25) plus a planted structure seen by the last 64
    queries: the `band` nearest keys get +6 logits (slashes), `v_cols` random earlier keys +7.5
    (verticals).  The planted directions are projected out of the random parts so the noise cannot
    create outliers that outrank them (e^{logit} tails otherwise pick scattered diagonals)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = 0.5 * torch.randn(B, HQ, n, D, device="cuda", generator=g)
    k = 0.5 * torch.randn(B, HKV, n, D, device="cuda", generator=g)
    v = torch.randn(B, HKV, n, D, device="cuda", generator=g)
    w = torch.linalg.qr(torch.randn(D, 2, device="cuda", generator=g))[0].T   # 2 orthonormal dirs
    q -= (q @ w.T) @ w
    k -= (k @ w.T) @ w
    alpha = math.sqrt(D)                          # q·k/sqrt(D) gains beta for beta·w on k
    q[:, :, -64:] += alpha * (w[0] + w[1])
    k[:, :, max(0, n - band):] += 6.0 * w[0]      # local band -> slashes
    hit = torch.randperm(max(1, n - band), device="cuda", generator=g)[:v_cols]
    k[:, :, hit] += 7.5 * w[1]                    # heavy columns outside the band -> verticals
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def dense_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def flex_block_mask(index, n, blk=128):
    """BlockMask (blk×blk) whose kept blocks cover our kept key blocks (columns not included)."""
    from torch.nn.attention.flex_attention import BlockMask
    Bq, H, M = index.shape
    nq = math.ceil(n / blk)
    dense = torch.zeros(Bq, H, nq, nq + 1, dtype=torch.bool, device="cuda")
    off = index.block_offset.long()
    ok = torch.arange(off.shape[-1], device="cuda") < index.block_count.long()[..., None]
    qb = (torch.arange(M, device="cuda") * index.block_m // blk)[None, None, :, None].expand_as(off)
    for edge in (0, index.block_n - 1):
        kb = ((off + edge).clamp(0, n - 1) // blk)
        kb = torch.where(ok, kb, nq)
        dense[torch.arange(Bq)[:, None, None, None], torch.arange(H)[None, :, None, None], qb, kb] = True
    dense = dense[..., :nq]
    ar = torch.arange(nq, device="cuda")
    dense |= (ar[:, None] == ar[None, :])                      # diagonal always
    dense &= ar[None, :] <= ar[:, None]                        # causal
    full = dense & (ar[None, :] < ar[:, None])
    part = dense & (ar[None, :] == ar[:, None])

    def pack(mk):
        cnt = mk.sum(-1).int()
        idx = torch.argsort(mk.int(), dim=-1, descending=True, stable=True).int()
        return cnt, idx

    pc, pi = pack(part)
    fc, fi = pack(full)
    causal = lambda b, h, qi, ki: qi >= ki
    bm = BlockMask.from_kv_blocks(pc, pi, fc, fi, BLOCK_SIZE=blk, mask_mod=causal, seq_lengths=(n, n))
    density = float(dense.sum()) / (Bq * H * nq * (nq + 1) / 2)
    return bm, density


def check_rows(out, q, k, v, index, n, rows_blocks):
    errs = []
    for mb in rows_blocks:
        r0, r1 = mb * index.block_m, min(n, (mb + 1) * index.block_m)
        mask = kept_mask(index, n, rows=slice(r0, r1))
        ref = _attend_rows(q[:, :, r0:r1].float(), k.float(), v.float(), mask, D ** -0.5)
        o = out[:, :, r0:r1].float()
        errs.append(((o - ref).norm() / ref.norm()).item())
    return max(errs)


def selftest():
    """Small GPU shapes, both dtypes, D 64/128, all patterns + mixed + keep-all vs cuDNN/SDPA."""
    from ..kernels import sparse_attention
    from ..kernels.reference import dense_causal_reference
    worst = 0.0
    for dt in (torch.bfloat16, torch.float16):
        for (b, hq, hkv, n, d) in [(2, 8, 2, 1000, 64), (1, 8, 8, 777, 128), (1, 32, 8, 2100, 128)]:
            q = torch.randn(b, hq, n, d, device="cuda", dtype=dt)
            k = torch.randn(b, hkv, n, d, device="cuda", dtype=dt)
            v = torch.randn(b, hkv, n, d, device="cuda", dtype=dt)
            mix = [HeadPattern("vertical_and_slash", 40, 100), HeadPattern("stream_llm", 64, 128),
                   HeadPattern("block_sparse", 3), HeadPattern("dense")] * (hq // 4)
            for pats in (mix, HeadPattern("vertical_and_slash", n, n), HeadPattern("block_sparse", 999)):
                for bm, bn in ((64, 64), (128, 64)):
                    out, idx = sparse_attention(q, k, v, pats, return_index=True, block_m=bm, block_n=bn)
                    ref = dense_causal_reference(q, k, v, mask=kept_mask(idx), dtype=torch.float32)
                    err = ((out.float() - ref).norm() / ref.norm()).item()
                    assert err < 2e-2 and not torch.isnan(out).any(), (dt, n, d, bm, err)
                    worst = max(worst, err)
            full = sparse_attention(q, k, v, HeadPattern("block_sparse", 999))
            sd = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
            assert ((full.float() - sd).norm() / sd.norm()).item() < 2e-2
    print(f"selftest ok: worst rel err vs fp32 masked reference {worst:.2e}", flush=True)
    return worst


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12


def run_kernel_bench(sizes, patterns=("vertical_and_slash", "block_sparse", "stream_llm"),
                     configs="128x128w8s3,128x64w8s3,64x64w4s3", reps=5, use_flex=True, selftest_first=False,
                     profile_index=False, out_path=None, log=print, command=None):
    """Time every pattern at every N against cuDNN (and FlexAttention); -> (meta, results, table)."""
    if not torch.cuda.is_available():
        from ..runtime.errors import AccelError

        raise AccelError("the kernel benchmark needs a CUDA GPU (the CPU runs the kernels only under TRITON_INTERPRET)")
    torch.backends.cuda.matmul.allow_tf32 = True
    import triton
    dev = torch.cuda.get_device_name()
    meta = {
        "device": dev, "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([os.path.basename(sys.executable)] + sys.argv),
        "shape": {"B": B, "Hq": HQ, "Hkv": HKV, "D": D, "dtype": "bfloat16", "causal": True},
        "inputs": "random normal + planted vertical-slash structure in the last-64 estimation window",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    if selftest_first:
        meta["selftest_worst_rel_err"] = selftest()
    parsed = []
    for c in configs.split(","):
        krows = not c.endswith("T")          # ...T: load K as (D, BN) columns instead of rows
        mn, rest = c.rstrip("T").split("w")
        bm, bn = map(int, mn.split("x"))
        nw, ns = map(int, rest.split("s"))
        parsed.append((bm, bn, nw, ns, krows))
    configs = parsed
    flex = None
    if use_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    results = []
    table = []
    for n in sizes:
        q, k, v = make_inputs(n)
        dense_flops = 4 * B * HQ * D * n * n / 2   # causal: half of the N×N products, QKᵀ and PV
        d_ms, d_all = cuda_time(lambda: dense_cudnn(q, k, v), warmup=1 if n > 200_000 else 2,
                                reps=3 if n > 200_000 else reps)
        d_tf = tflops(dense_flops, d_ms)
        log(f"N={n} cuDNN dense {d_ms:.2f} ms {d_tf:.0f} TFLOP/s", flush=True)
        for pname in patterns:
            pat = get_pattern(pname).reference(n)   # v=1000 s=6096; ~5% of causal tiles; 1024 + 4096
            pats = [pat] * HQ
            rec = {"n": n, "pattern": pat.to_list(), "dense_cudnn_ms": d_ms, "dense_cudnn_all_ms": d_all,
                   "dense_cudnn_tflops": d_tf, "variants": []}
            best = None
            idx_cache = {}
            if isinstance(pat.kind, VerticalSlash) and profile_index:
                from ..kernels.index import estimate_vertical_slash, vertical_slash_index
                e_ms, _ = cuda_time(lambda: estimate_vertical_slash(q, k, pat.size_1, pat.size_2), warmup=1, reps=3)
                vv, ss = estimate_vertical_slash(q, k, pat.size_1, pat.size_2)
                c_ms, _ = cuda_time(lambda: vertical_slash_index(vv, ss, n, 64, 64), warmup=1, reps=3)
                from ..kernels.index import _gqa_last_scores
                s_ms, _ = cuda_time(lambda: _gqa_last_scores(q, k, 64, D ** -0.5), warmup=1, reps=3)
                rec["index_profile_ms"] = {"estimate": e_ms, "scores_softmax": s_ms, "convert": c_ms}
                log(f"  index profile: estimate {e_ms:.2f} (scores+softmax {s_ms:.2f}) convert {c_ms:.2f} ms")
            for (bm, bn, nw, ns, krows) in configs:
                if (bm, bn) not in idx_cache:
                    build = lambda: build_index(q, k, pats, block_m=bm, block_n=bn)
                    i_ms, _ = cuda_time(build, warmup=1, reps=reps)
                    idx_cache[(bm, bn)] = (build(), i_ms)
                index, i_ms = idx_cache[(bm, bn)]
                run = lambda: sparse_attention_triton(q, k, v, index, num_warps=nw, num_stages=ns, k_rows=krows)
                try:
                    k_ms, _ = cuda_time(run, warmup=2, reps=reps)
                except Exception as e:  # a config that does not compile (shared memory) is skipped
                    log(f"  config {bm}x{bn}w{nw}s{ns}{'' if krows else 'T'} failed: {type(e).__name__}: {str(e)[:200]}")
                    continue
                total = lambda: sparse_attention_triton(q, k, v, build_index(q, k, pats, block_m=bm, block_n=bn),
                                                        num_warps=nw, num_stages=ns, k_rows=krows)
                t_ms, _ = cuda_time(total, warmup=1, reps=reps)
                cost = kernel_cost(index, n, D)
                var = {"block_m": bm, "block_n": bn, "num_warps": nw, "num_stages": ns, "k_rows": krows,
                       "total_ms": t_ms, "kernel_ms": k_ms, "index_ms": i_ms,
                       "kernel_flops": cost, "density": index.density(),
                       "kernel_tflops": tflops(cost, k_ms)}
                rec["variants"].append(var)
                log(f"  {pname} {bm}x{bn} w{nw} s{ns}{'' if krows else 'T'}: total {t_ms:.2f} kernel {k_ms:.2f} index {i_ms:.2f} ms "
                      f"density {var['density']:.3f} {var['kernel_tflops']:.0f} TFLOP/s", flush=True)
                if best is None or t_ms < best["total_ms"]:
                    best = var
            if best is None:
                continue
            index = idx_cache[(best["block_m"], best["block_n"])][0]
            out = sparse_attention_triton(q, k, v, index, num_warps=best["num_warps"], num_stages=best["num_stages"],
                                          k_rows=best["k_rows"])
            M = index.num_q_blocks
            rec["max_rel_err_sampled_blocks"] = check_rows(out, q, k, v, index, n, [0, 1, M // 3, M - 2, M - 1])
            rec["nan"] = bool(torch.isnan(out).any())
            rec["best"] = best
            rec["speedup_vs_cudnn"] = d_ms / best["total_ms"]
            rec["kernel_eff_vs_cudnn"] = best["kernel_tflops"] / d_tf
            rec["index_share"] = best["index_ms"] / best["total_ms"]
            if flex is not None:
                bmask, fdens = flex_block_mask(index, n)
                f_ms, _ = cuda_time(lambda: flex(q, k, v, block_mask=bmask, enable_gqa=True), warmup=2,
                                    reps=reps)
                rec.update(flex_ms=f_ms, flex_block_density=fdens, speedup_vs_flex=f_ms / best["total_ms"],
                           kernel_vs_flex=f_ms / best["kernel_ms"])
            results.append(rec)
            table.append((n, pname, d_ms, best["total_ms"], best["kernel_ms"], best["index_ms"],
                          best["density"], rec["speedup_vs_cudnn"], rec["kernel_eff_vs_cudnn"],
                          rec.get("flex_ms", float("nan")), rec["max_rel_err_sampled_blocks"],
                          f"{best['block_m']}x{best['block_n']}w{best['num_warps']}s{best['num_stages']}"
                          + ("" if best["k_rows"] else "T")))
            if out_path:
                with open(out_path, "w") as f:
                    json.dump({"meta": meta, "results": results}, f, indent=1)
        del q, k, v
        torch.cuda.empty_cache()
    return meta, results, table


def print_table(dev, table, log=print):
    log(f"\n{dev}  (times ms; total = index + kernel; eff = kernel TFLOP/s over computed tiles / cuDNN's)")
    log(f"{'N':>7} {'pattern':>18} {'cuDNN':>8} {'total':>8} {'kernel':>8} {'index':>7} {'dens':>6} "
          f"{'x cuDNN':>7} {'eff':>5} {'flex':>8} {'err':>8} cfg")
    for r in table:
        log(f"{r[0]:>7} {r[1]:>18} {r[2]:8.2f} {r[3]:8.2f} {r[4]:8.2f} {r[5]:7.2f} {r[6]:6.3f} "
              f"{r[7]:7.2f} {r[8]:5.2f} {r[9]:8.2f} {r[10]:8.1e} {r[11]}")




def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32768,131072,262144")
    ap.add_argument("--patterns", default="vertical_and_slash,block_sparse,stream_llm")
    ap.add_argument("--configs", default="128x128w8s3,128x64w8s3,64x64w4s3")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--out", default="results/kernels-bench.json")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--profile-index", action="store_true")
    args = ap.parse_args()
    meta, _, table = run_kernel_bench([int(x) for x in args.sizes.split(",")], args.patterns.split(","),
                                      args.configs, args.reps, not args.no_flex, args.selftest,
                                      args.profile_index, args.out)
    print_table(meta["device"], table)


if __name__ == "__main__":
    main()
