"""GPU benchmark: sparse prefill kernels vs cuDNN SDPA and FlexAttention.

  accel bench kernels --lengths 32k,128k,256k --json results/kernels.json
  PYTHONUNBUFFERED=1 python -m accel.bench.kernels --selftest --profile-index --out results/kernels-h200.json
  python -m accel.bench.kernels --shape 1,14,2,64 --sizes 16384,31744    # Qwen2.5-0.5B-class heads

Shape: default B=1, 32 query heads, 8 kv heads, d=128 (Llama-3-8B attention), bf16, causal; `shape=`
/ ``--shape B,Hq,Hkv,D`` for others.  For every N and pattern:
  * cuDNN SDPA dense (sdpa_kernel([CUDNN_ATTENTION]), enable_gqa=True)
  * ours: index build (online estimation included: the fused Triton estimation on CUDA) + one Triton
    launch; kernel alone; index alone; several kernel configs (BLOCK_M/BLOCK_N/num_warps/num_stages),
    best reported; `--profile-index`: reference vs fused estimation and conversion, and how often their
    choices agree (bf16 logits in the reference, fp32 in the fused kernel)
  * padding share = FLOPs the kernel computes / FLOPs of exactly the kept (query, key) pairs (>= 1)
  * FlexAttention (compiled), two columns:
    - "flex_blocks" (the old column): a BlockMask made from OUR kept blocks (128-aligned superset,
      causal mask_mod on diagonal blocks only); vertical-slash's gathered single columns are NOT given
      to Flex, and off-diagonal blocks are computed whole: less exact work than ours in some places,
      more in others;
    - "flex_exact" (fair): a BlockMask over every 128x128 tile holding a kept pair (tiles entirely kept
      marked full) plus a `mask_mod` that keeps exactly our keys (vertical columns included), so Flex
      computes the same attention as our kernel; its output is checked against ours.
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


def make_inputs(n, seed=0, v_cols=1000, band=6160, shape=None, device="cuda"):
    """Random q/k/v (std 0.5 -> logit noise std 0.25) plus a planted structure seen by the last 64
    queries: the `band` nearest keys get +6 logits (slashes), `v_cols` random earlier keys +7.5
    (verticals).  The planted directions are projected out of the random parts so the noise cannot
    create outliers that outrank them (e^{logit} tails otherwise pick scattered diagonals).
    `shape` = (B, Hq, Hkv, D), default the Llama-3-8B attention shape."""
    b, hq, hkv, d = shape or (B, HQ, HKV, D)
    g = torch.Generator(device=device).manual_seed(seed)
    q = 0.5 * torch.randn(b, hq, n, d, device=device, generator=g)
    k = 0.5 * torch.randn(b, hkv, n, d, device=device, generator=g)
    v = torch.randn(b, hkv, n, d, device=device, generator=g)
    w = torch.linalg.qr(torch.randn(d, 2, device=device, generator=g))[0].T   # 2 orthonormal dirs
    q -= (q @ w.T) @ w
    k -= (k @ w.T) @ w
    alpha = math.sqrt(d)                          # q·k/sqrt(D) gains beta for beta·w on k
    q[:, :, -64:] += alpha * (w[0] + w[1])
    k[:, :, max(0, n - band):] += 6.0 * w[0]      # local band -> slashes
    hit = torch.randperm(max(1, n - band), device=device, generator=g)[:v_cols]
    k[:, :, hit] += 7.5 * w[1]                    # heavy columns outside the band -> verticals
    dt = torch.bfloat16 if device != "cpu" else torch.float32
    return q.to(dt), k.to(dt), v.to(dt)


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


def kept_key_flops(index, n=None, d=None) -> int:
    """FLOPs (QKᵀ and PV, 4·D per pair) of exactly the kept (query, key) pairs of `index`, causal:
    the denominator of the padding share.  Per kept key k of query block [r0, r1) the rows that see it
    are max(0, r1 - max(k, r0)); summed in closed form per block and per column, never an N×N mask."""
    n = index.n if n is None else n
    d = 128 if d is None else d
    B, H, M = index.shape
    dev = index.block_count.device
    bm, bn = index.block_m, index.block_n
    m = torch.arange(M, device=dev, dtype=torch.int64)
    r0 = (m * bm)[None, None, :]
    r1 = torch.clamp(r0 + bm, max=n)

    def rows_seeing(lo, hi, r0, r1):  # keys lo..hi (inclusive, may be empty): sum of rows seeing them
        lo = torch.clamp(lo, min=0)
        hi = torch.minimum(hi, r1 - 1)
        below_hi = torch.minimum(hi, r0 - 1)                         # keys < r0: every row
        n_below = torch.clamp(below_hi - lo + 1, min=0)
        a = torch.maximum(lo, r0)                                      # keys in [r0, r1): r1 - k rows
        cnt = torch.clamp(hi - a + 1, min=0)
        return n_below * (r1 - r0) + cnt * r1 - torch.where(cnt > 0, (a + hi) * cnt // 2, 0)

    total = 0
    off = index.block_offset.long()
    ok = torch.arange(off.shape[-1], device=dev) < index.block_count.long()[..., None]
    per = rows_seeing(off, off + bn - 1, r0[..., None], r1[..., None])
    total += int(torch.where(ok, per, 0).sum())
    col = index.column_index.long()
    okc = torch.arange(col.shape[-1], device=dev) < index.column_count.long()[..., None]
    per = rows_seeing(col, col, r0[..., None], r1[..., None])
    total += int(torch.where(okc, per, 0).sum())
    total += B * int(index.dense_heads.sum()) * n * (n + 1) // 2
    return 4 * d * total


def _relative_cover(index, n):
    """(B, H, span) bool: relative offsets x = key - r0 in [-n, block_m + block_n) covered by some kept
    block.  Vertical-slash blocks are the same for every query block once written relative to its start
    (the builder's invariant), so this and the gathered columns describe the whole head."""
    B, H, M = index.shape
    bm, bn = index.block_m, index.block_n
    dev = index.block_count.device
    span = n + bm + bn
    off = index.block_offset.long()
    ok = torch.arange(off.shape[-1], device=dev) < index.block_count.long()[..., None]
    rel = off - (torch.arange(M, device=dev) * bm)[None, None, :, None] + n
    lo = torch.where(ok, rel.clamp(0, span), span).flatten(2)
    hi = torch.where(ok, (rel + bn).clamp(0, span), span).flatten(2)
    diff = torch.zeros(B, H, span + 1, dtype=torch.int32, device=dev)
    diff.scatter_add_(-1, lo, torch.ones_like(lo, dtype=torch.int32))
    diff.scatter_add_(-1, hi, -torch.ones_like(hi, dtype=torch.int32))
    return torch.cumsum(diff, -1)[..., :span] > 0


def _pair_counts(index, n, blk, kind):
    """Per (b, h, our query block m, Flex key block): number of kept keys (of the block's kept set,
    before causality) and the width of the key block, plus the per-head lookup tables of mask_mod."""
    B, H, M = index.shape
    bm, bn = index.block_m, index.block_n
    dev = index.block_count.device
    nk = -(-n // blk)
    k0 = torch.arange(nk, device=dev) * blk
    k1 = torch.clamp(k0 + blk, max=n)
    dh = index.dense_heads.to(dev)
    if kind == "relative":                       # vertical-slash: relative cover + absolute columns
        cover = _relative_cover(index, n)
        cover[:, dh] = True
        isvert = torch.zeros(B, H, n + 1, dtype=torch.bool, device=dev)
        col = index.column_index.long()
        okc = torch.arange(col.shape[-1], device=dev) < index.column_count.long()[..., None]
        isvert.scatter_(-1, torch.where(okc, col, n).flatten(2), True)
        isvert = isvert[..., :n].contiguous()
        cum_c = torch.nn.functional.pad(torch.cumsum(cover.int(), -1), (1, 0))       # (B,H,span+1)
        cum_v = torch.nn.functional.pad(torch.cumsum(isvert.int(), -1), (1, 0))      # (B,H,n+1)
        r0 = torch.arange(M, device=dev) * bm
        span = cover.shape[-1]
        a = (k0[None, :] - r0[:, None] + n).clamp(0, span)                           # (M, nk)
        b = (k1[None, :] - r0[:, None] + n).clamp(0, span)
        covered = cum_c[:, :, b] - cum_c[:, :, a]                                    # (B,H,M,nk)
        verts = (cum_v[..., k1] - cum_v[..., k0])[:, :, None, :]
        return covered, verts, (cover, isvert)
    # aligned blocks (A-shape, block-sparse, dense): a (B, H, M, key block) bitmap
    nb = -(-n // bn)
    blkmap = torch.zeros(B, H, M, nb + 1, dtype=torch.bool, device=dev)
    off = index.block_offset.long()
    ok = torch.arange(off.shape[-1], device=dev) < index.block_count.long()[..., None]
    if bool(((off % bn != 0) & ok).any()):
        raise ValueError("aligned Flex masks need block offsets that are multiples of block_n")
    blkmap.scatter_(-1, torch.where(ok, off // bn, nb), True)
    blkmap = blkmap[..., :nb].contiguous()
    blkmap[:, dh] = True
    keys = torch.minimum((torch.arange(nb, device=dev) + 1) * bn, torch.tensor(n, device=dev)) \
        - torch.arange(nb, device=dev) * bn                                        # keys per block
    kept_keys = blkmap.int() * keys
    cum = torch.nn.functional.pad(torch.cumsum(kept_keys, -1), (1, 0))             # (B,H,M,nb+1)
    kb0 = (k0 // bn).clamp(max=nb)
    kb1 = (-(-k1 // bn)).clamp(max=nb)
    covered = cum[..., kb1] - cum[..., kb0]
    return covered, torch.zeros_like(covered[:, :, :1]), (blkmap,)


def flex_exact_mask(index, n, kind="relative", blk=128):
    """(BlockMask, mask_mod, partial, full) for FlexAttention computing exactly our kept keys.

    kind="relative" for vertical-slash indexes (arbitrary block starts, gathered columns), "aligned" for
    A-shape / block-sparse (block starts multiples of block_n).  A (query tile, key tile) of `blk` is
    *full* when every row of it keeps every key (then Flex skips mask_mod there) and *partial* when it
    keeps some key; mask_mod answers per (row, key) from per-head tables (no N×N tensor)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, H, M = index.shape
    bm, bn = index.block_m, index.block_n
    if blk % bm:
        raise ValueError(f"Flex tile {blk} must be a multiple of block_m {bm}")
    covered, verts, tables = _pair_counts(index, n, blk, kind)
    dev = covered.device
    nq = -(-n // blk)
    k0 = torch.arange(covered.shape[-1], device=dev) * blk
    width = torch.clamp(k0 + blk, max=n) - k0
    r0 = torch.arange(M, device=dev) * bm
    reach = k0[None, :] <= torch.clamp(r0 + bm, max=n)[:, None] - 1                  # some key <= last row
    below = (k0 + width - 1)[None, :] <= r0[:, None]                                 # every key <= first row
    partial_m = ((covered > 0) | (verts > 0)) & reach
    full_m = (covered == width) & below
    per = blk // bm                                   # our query blocks per Flex query tile
    pad = nq * per - M
    if pad:
        partial_m = torch.nn.functional.pad(partial_m, (0, 0, 0, pad), value=False)
        full_m = torch.nn.functional.pad(full_m, (0, 0, 0, pad), value=True)
    partial = partial_m.view(B, H, nq, per, -1).any(3)
    full = full_m.view(B, H, nq, per, -1).all(3) & partial
    partial = partial & ~full

    if kind == "relative":
        cover, isvert = tables
        span = cover.shape[-1]

        # clamps: Flex may evaluate mask_mod on the padding rows / keys of a ragged last tile
        def mask_mod(b, h, q_idx, kv_idx):
            rel = torch.clamp(kv_idx - (q_idx // bm) * bm + n, 0, span - 1)
            return (kv_idx <= q_idx) & (cover[b, h, rel] | isvert[b, h, torch.clamp(kv_idx, max=n - 1)])
    else:
        (blkmap,) = tables
        nb = blkmap.shape[-1]

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & blkmap[b, h, torch.clamp(q_idx // bm, max=M - 1),
                                              torch.clamp(kv_idx // bn, max=nb - 1)]

    def pack(mk):
        cnt = mk.sum(-1).int()
        idx = torch.argsort(mk.int(), dim=-1, descending=True, stable=True).int()
        return cnt, idx

    pc, pi = pack(partial)
    fc, fi = pack(full)
    bmask = BlockMask.from_kv_blocks(pc, pi, fc, fi, BLOCK_SIZE=blk, mask_mod=mask_mod, seq_lengths=(n, n))
    return bmask, mask_mod, partial, full


def check_rows(out, q, k, v, index, n, rows_blocks):
    errs = []
    for mb in rows_blocks:
        r0, r1 = mb * index.block_m, min(n, (mb + 1) * index.block_m)
        mask = kept_mask(index, n, rows=slice(r0, r1))
        ref = _attend_rows(q[:, :, r0:r1].float(), k.float(), v.float(), mask, q.shape[-1] ** -0.5)
        o = out[:, :, r0:r1].float()
        errs.append(((o - ref).norm() / ref.norm()).item())
    return max(errs)


def sparse_binaries() -> dict:
    """Compiled Triton binaries per sparse-path kernel (Triton 3.x: device_caches[device][0]); None
    where this Triton keeps them elsewhere (or under the CPU interpreter, which compiles nothing)."""
    from ..kernels import index_fill, triton_sparse, vs_fused

    out = {}
    for name, fn in (("attn", triton_sparse._sparse_attn_fwd), ("vs_stats", vs_fused._vs_stats),
                     ("vs_sums", vs_fused._vs_sums), ("diag_combine", vs_fused._diag_combine),
                     ("slash_tiles", vs_fused._slash_tiles), ("vs_lists", vs_fused._vs_lists),
                     ("block_lists", vs_fused._block_lists), ("fill_rows", index_fill._fill_rows)):
        try:
            out[name] = sum(len(c[0]) for c in fn.device_caches.values())
        except Exception:
            out[name] = None
    return out


def new_length_check(lengths=(1000, 1337, 2049, 3001), shape=(1, 14, 2, 64)):
    """After the first length, no sparse-path kernel may compile again: -> (binaries added per later
    length, ms each later first call took)."""
    from ..kernels import sparse_attention
    b, hq, hkv, d = shape
    pats = ([HeadPattern("vertical_and_slash", 200, 400), HeadPattern("stream_llm", 64, 256)] * hq)[:hq]
    added, first_ms = [], []
    for i, n in enumerate(lengths):
        q = torch.randn(b, hq, n, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hkv, n, d, device="cuda", dtype=torch.bfloat16)
        before = sparse_binaries()
        torch.cuda.synchronize()
        t = time.perf_counter()
        sparse_attention(q, k, v, pats)
        torch.cuda.synchronize()
        if i:
            first_ms.append((time.perf_counter() - t) * 1e3)
            after = sparse_binaries()
            added.append(sum((after[x] or 0) - (before[x] or 0) for x in after))
    return added, first_ms


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
    # fused estimation (the CUDA default) vs the torch reference: fp32 inputs without tf32 give the same
    # logits up to rounding, hence the same index; bf16 inputs round the reference's logits to bf16
    # (the fused kernel keeps fp32), so there only the agreement of the chosen sets is reported
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    same, cases, worst_agree = 0, 0, 1.0
    try:
        for (b, hq, hkv, n, d) in [(1, 14, 2, 3001, 64), (2, 8, 2, 1000, 64), (1, 32, 8, 2100, 128)]:
            q = torch.randn(b, hq, n, d, device="cuda")
            k = torch.randn(b, hkv, n, d, device="cuda")
            pats = [HeadPattern("vertical_and_slash", 100, 300), HeadPattern("vertical_and_slash", 30, 64)] * (hq // 2)
            for bm, bn in ((64, 64), (128, 128), (128, 64)):
                ref = build_index(q, k, pats, bm, bn, fused=False)
                fus = build_index(q, k, pats, bm, bn, fused=True)
                ka, kb = kept_mask(ref, rows=slice(n - 300, n)), kept_mask(fus, rows=slice(n - 300, n))
                cases += 1
                same += bool(torch.equal(ka, kb) and torch.equal(ref.block_count, fus.block_count)
                             and torch.equal(ref.column_count, fus.column_count))
                worst_agree = min(worst_agree, float((ka == kb).float().mean()))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    # fp32 both ways, only the summation order differs: identical except at a near-tie at a budget edge
    assert worst_agree > 0.999, ("fused index far from the reference", worst_agree)
    from ..kernels.index import _top_sorted, vertical_slash_scores
    from ..kernels.index import vertical_slash_scores_fused
    q = torch.randn(1, 14, 8000, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 8000, 64, device="cuda", dtype=torch.bfloat16)
    (cr, dr), (cf, df) = vertical_slash_scores(q, k), vertical_slash_scores_fused(q, k)
    agree = (_choices_agree(_top_sorted(cf, 1000), _top_sorted(cr, 1000)),
             _choices_agree(_top_sorted(df, 2000), _top_sorted(dr, 2000)))
    added, first_ms = new_length_check()
    assert not any(added), ("a new prompt length compiled sparse kernels again", added)
    print(f"selftest ok: new prompt lengths compiled nothing (first calls {', '.join(f'{x:.1f}' for x in first_ms)} ms); "
          f"worst rel err vs fp32 masked reference {worst:.2e}; fused index == reference (fp32) "
          f"in {same}/{cases} cases (worst kept-key agreement {worst_agree:.5f}); "
          f"bf16 fused/reference choices agree {agree[0]:.4f} (vertical) {agree[1]:.4f} (slash)", flush=True)
    return worst


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12


def parse_configs(configs: str):
    """"128x128w8s3,64x64w4s3T" -> [(block_m, block_n, num_warps, num_stages, k_rows)]; a trailing T
    loads K as (D, BN) columns instead of rows."""
    parsed = []
    for c in configs.split(","):
        krows = not c.endswith("T")
        mn, rest = c.rstrip("T").split("w")
        bm, bn = map(int, mn.split("x"))
        nw, ns = map(int, rest.split("s"))
        parsed.append((bm, bn, nw, ns, krows))
    return parsed


def _choices_agree(a, b):
    """Share of chosen entries that two (B, H, k) index tensors have in common (1.0 = same sets)."""
    if a.numel() == 0:
        return 1.0
    same = (a[..., :, None] == b[..., None, :]).any(-1).float().mean()
    return float(same)


def profile_vertical_slash_index(q, k, v_size, s_size, bm, bn, log=print):
    """Reference vs fused estimation and conversion: times (ms) and agreement of their choices."""
    from ..kernels.index import _top_sorted, vertical_slash_index, vertical_slash_scores
    from ..kernels.index import vertical_slash_scores_fused
    from ..kernels.vs_fused import vertical_slash_index_fused

    n = q.shape[2]
    rec = {}
    rec["scores_reference"], _ = cuda_time(lambda: vertical_slash_scores(q, k), warmup=1, reps=3)
    from ..kernels import vs_fused
    rec["scores_fused"], _ = cuda_time(lambda: vertical_slash_scores_fused(q, k), warmup=1, reps=3)
    keep = vs_fused.SKEW_GATHER
    vs_fused.SKEW_GATHER = not keep   # the other diagonal-skew variant (gather vs scratch)
    try:
        rec["scores_fused_other_skew"], _ = cuda_time(lambda: vertical_slash_scores_fused(q, k), warmup=1, reps=3)
    finally:
        vs_fused.SKEW_GATHER = keep
    col_r, diag_r = vertical_slash_scores(q, k)
    col_f, diag_f = vertical_slash_scores_fused(q, k)
    vv, ss = min(v_size, n), min(s_size, n)
    vr, sr = _top_sorted(col_r, vv), _top_sorted(diag_r, ss)
    vf, sf = _top_sorted(col_f, vv), _top_sorted(diag_f, ss)
    rec["topk"], _ = cuda_time(lambda: (_top_sorted(col_f, vv), _top_sorted(diag_f, ss)), warmup=1, reps=3)
    rec["convert_reference"], _ = cuda_time(lambda: vertical_slash_index(vf, sf, n, bm, bn), warmup=1, reps=3)
    rec["convert_fused"], _ = cuda_time(lambda: vertical_slash_index_fused(vf, sf, n, bm, bn), warmup=1, reps=3)
    rec["agree_vertical"] = _choices_agree(vf, vr)
    rec["agree_slash"] = _choices_agree(sf, sr)
    log("  index profile (ms): scores ref {scores_reference:.2f} fused {scores_fused:.2f} (other skew "
        "{scores_fused_other_skew:.2f}) | top-k {topk:.2f} | convert ref {convert_reference:.2f} fused "
        "{convert_fused:.2f} | fused==ref choices: vertical {agree_vertical:.4f} slash {agree_slash:.4f}"
        .format(**rec), flush=True)
    return rec


def run_kernel_bench(sizes, patterns=("vertical_and_slash", "block_sparse", "stream_llm"),
                     configs="128x128w8s3,128x64w8s3,64x64w4s3", reps=5, use_flex=True, selftest_first=False,
                     profile_index=False, out_path=None, log=print, command=None, shape=None,
                     vs_budget=(1000, 6096), flex_exact=True):
    """Time every pattern at every N against cuDNN (and FlexAttention); -> (meta, results, table).
    `shape` = (B, Hq, Hkv, D), default the Llama-3-8B attention shape."""
    if not torch.cuda.is_available():
        from ..runtime.errors import AccelError

        raise AccelError("the kernel benchmark needs a CUDA GPU (the CPU runs the kernels only under TRITON_INTERPRET)")
    torch.backends.cuda.matmul.allow_tf32 = True
    import triton
    b_, hq, hkv, d = shape = tuple(shape or (B, HQ, HKV, D))
    v_size, s_size = vs_budget
    dev = torch.cuda.get_device_name()
    meta = {
        "device": dev, "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([os.path.basename(sys.executable)] + sys.argv),
        "shape": {"B": b_, "Hq": hq, "Hkv": hkv, "D": d, "dtype": "bfloat16", "causal": True},
        "inputs": "random normal + planted vertical-slash structure in the last-64 estimation window",
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }
    if selftest_first:
        meta["selftest_worst_rel_err"] = selftest()
    configs = parse_configs(configs)
    flex = None
    if use_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
    results = []
    table = []
    for n in sizes:
        q, k, v = make_inputs(n, shape=shape, v_cols=v_size, band=s_size + 64)
        dense_flops = 4 * b_ * hq * d * n * n / 2   # causal: half of the N×N products, QKᵀ and PV
        d_ms, d_all = cuda_time(lambda: dense_cudnn(q, k, v), warmup=1 if n > 200_000 else 2,
                                reps=3 if n > 200_000 else reps)
        d_tf = tflops(dense_flops, d_ms)
        log(f"N={n} cuDNN dense {d_ms:.2f} ms {d_tf:.0f} TFLOP/s", flush=True)
        for pname in patterns:
            if isinstance(get_pattern(pname), VerticalSlash):
                pat = HeadPattern(pname, v_size, s_size)
            else:
                pat = get_pattern(pname).reference(n)   # ~5 % of causal tiles; A-shape 1024 + 4096
            pats = [pat] * hq
            rec = {"n": n, "shape": list(shape), "pattern": pat.to_list(), "dense_cudnn_ms": d_ms,
                   "dense_cudnn_all_ms": d_all, "dense_cudnn_tflops": d_tf, "variants": []}
            best = None
            idx_cache = {}
            if isinstance(pat.kind, VerticalSlash) and profile_index:
                rec["index_profile_ms"] = profile_vertical_slash_index(q, k, v_size, s_size, *configs[0][:2], log=log)
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
                cost = kernel_cost(index, n, d)
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
            rec["kept_flops"] = kept_key_flops(index, n, d)
            rec["padding_share"] = best["kernel_flops"] / max(1, rec["kept_flops"])
            rec["speedup_vs_cudnn"] = d_ms / best["total_ms"]
            rec["kernel_eff_vs_cudnn"] = best["kernel_tflops"] / d_tf
            rec["index_share"] = best["index_ms"] / best["total_ms"]
            if flex is not None:
                bmask, fdens = flex_block_mask(index, n)
                f_ms, _ = cuda_time(lambda: flex(q, k, v, block_mask=bmask, enable_gqa=True), warmup=2,
                                    reps=reps)
                rec.update(flex_ms=f_ms, flex_block_density=fdens, speedup_vs_flex=f_ms / best["total_ms"],
                           kernel_vs_flex=f_ms / best["kernel_ms"])
                if flex_exact:
                    try:
                        kind = "relative" if pname == "vertical_and_slash" else "aligned"
                        emask, _, part, full = flex_exact_mask(index, n, kind, 128)
                        fx = lambda: flex(q, k, v, block_mask=emask, enable_gqa=True)
                        fo = fx()
                        fe_ms, _ = cuda_time(fx, warmup=2, reps=reps)
                        err = ((fo.float() - out.float()).norm() / out.float().norm()).item()
                        rec.update(flex_exact_ms=fe_ms, flex_exact_vs_ours_rel_err=err,
                                   flex_exact_tiles={"partial": int(part.sum()), "full": int(full.sum())},
                                   speedup_vs_flex_exact=fe_ms / best["total_ms"],
                                   kernel_vs_flex_exact=fe_ms / best["kernel_ms"])
                        log(f"  flex exact keys {fe_ms:.2f} ms (ours total {best['total_ms']:.2f}: "
                            f"{rec['speedup_vs_flex_exact']:.2f}x; rel diff of outputs {err:.1e})", flush=True)
                    except Exception as e:  # report, keep the rest of the run
                        rec["flex_exact_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        log(f"  flex exact failed: {rec['flex_exact_error']}")
            results.append(rec)
            table.append((n, pname, d_ms, best["total_ms"], best["kernel_ms"], best["index_ms"],
                          best["density"], rec["speedup_vs_cudnn"], rec["kernel_eff_vs_cudnn"],
                          rec.get("flex_ms", float("nan")), rec["max_rel_err_sampled_blocks"],
                          f"{best['block_m']}x{best['block_n']}w{best['num_warps']}s{best['num_stages']}"
                          + ("" if best["k_rows"] else "T"),
                          rec.get("flex_exact_ms", float("nan")), rec["padding_share"], rec["index_share"]))
            if out_path:
                with open(out_path, "w") as f:
                    json.dump({"meta": meta, "results": results}, f, indent=1)
        del q, k, v
        torch.cuda.empty_cache()
    return meta, results, table


def print_table(dev, table, log=print):
    log(f"\n{dev}  (times ms; total = index + kernel; eff = kernel TFLOP/s over computed tiles / cuDNN's; "
        f"pad = computed / kept-pair FLOPs; idx% = index share of total; flexX = Flex on exactly our keys)")
    log(f"{'N':>7} {'pattern':>18} {'cuDNN':>8} {'total':>8} {'kernel':>8} {'index':>7} {'idx%':>5} {'dens':>6} "
        f"{'pad':>5} {'x cuDNN':>7} {'eff':>5} {'flex':>8} {'flexX':>8} {'xFlexX':>6} {'err':>8} cfg")
    for r in table:
        fx = r[12]
        log(f"{r[0]:>7} {r[1]:>18} {r[2]:8.2f} {r[3]:8.2f} {r[4]:8.2f} {r[5]:7.2f} {100 * r[14]:5.1f} {r[6]:6.3f} "
            f"{r[13]:5.2f} {r[7]:7.2f} {r[8]:5.2f} {r[9]:8.2f} {fx:8.2f} {fx / r[3]:6.2f} {r[10]:8.1e} {r[11]}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32768,131072,262144")
    ap.add_argument("--patterns", default="vertical_and_slash,block_sparse,stream_llm")
    ap.add_argument("--configs", default="128x128w8s3,128x64w8s3,64x64w4s3")
    ap.add_argument("--shape", default="1,32,8,128", help="B,Hq,Hkv,D (default: Llama-3-8B attention)")
    ap.add_argument("--vs", default="1000,6096", help="vertical-slash budget v,s")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-flex-exact", action="store_true")
    ap.add_argument("--out", default="results/kernels-bench.json")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--profile-index", action="store_true")
    args = ap.parse_args(argv)
    meta, _, table = run_kernel_bench([int(x) for x in args.sizes.split(",")], args.patterns.split(","),
                                      args.configs, args.reps, not args.no_flex, args.selftest,
                                      args.profile_index, args.out,
                                      shape=tuple(int(x) for x in args.shape.split(",")),
                                      vs_budget=tuple(int(x) for x in args.vs.split(",")),
                                      flex_exact=not args.no_flex_exact)
    print_table(meta["device"], table)
    return meta, table


if __name__ == "__main__":
    main()
