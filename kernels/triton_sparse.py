"""Triton sparse-prefill kernel: one launch per layer, any mix of patterns across heads.

Grid = (B*Hq, M query blocks).  Axis 0 is the head so that consecutive programs are the query heads of
one GQA group on the same query block: they read the same kv head (and for A-shape / block-sparse often
the same key blocks), which L2 then serves once.  Query blocks run heaviest-first (last block first)
so the long causal tail does not straggle at the end of the launch.

Per program: load its BLOCK_M query rows once, then
  1. iterate the kept key blocks (``block_offset``; arbitrary start, BLOCK_N keys each), applying the
     causal / bounds mask only on blocks that cross the diagonal or the sequence ends;
  2. iterate the gathered single columns (``column_index``) BLOCK_N at a time;
with ONE online softmax (fp32 running max / sum / accumulator, exp2 with log2(e) folded into the
scale).  GQA: the kv head is h // (Hq // Hkv), read in place (no repeat_kv).
Dense heads of the index are written by SDPA afterwards (cuDNN on Hopper beats any Triton kernel).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .index import SparseIndex


# Every int derived from the prompt length is a runtime value: Triton would otherwise specialise on
# "== 1" and "% 16 == 0" of each and compile a new binary for a new length class (measured 2-9 s per
# unseen prompt on an H200).  Strides stay specialised: with D % 16 == 0 their divisibility never
# changes with N, and it is what lets the compiler issue 16-byte loads.
LENGTH_ARGS = ("N", "M", "MAX_B", "MAX_C")


@triton.jit(do_not_specialize=LENGTH_ARGS)
def _sparse_attn_fwd(
    Q, K, V, O, BC, BO, CC, CI,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    N, Hq, G, M, MAX_B, MAX_C, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
    HEAVY_FIRST: tl.constexpr, ALWAYS_MASK: tl.constexpr, K_ROWS: tl.constexpr,
    LOOP_STAGES: tl.constexpr = None, WARP_SPEC: tl.constexpr = False,
):
    bh = tl.program_id(0)
    pm = tl.program_id(1)
    if HEAVY_FIRST:
        m = M - 1 - pm
    else:
        m = pm
    b = (bh // Hq).to(tl.int64)
    h = bh % Hq
    kvh = (h // G).to(tl.int64)
    row_lo = m * BLOCK_M
    offs_m = row_lo + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    q = tl.load(Q + b * sqb + h.to(tl.int64) * sqh + offs_m[:, None].to(tl.int64) * sqn + offs_d[None, :],
                mask=offs_m[:, None] < N, other=0.0)                          # (BM, D)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh
    meta = (bh.to(tl.int64) * M + m)
    nb = tl.load(BC + meta)
    nc = tl.load(CC + meta)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], dtype=tl.float32)

    # ---- 1. kept key blocks ------------------------------------------------------------
    # LOOP_STAGES: pipeline depth of this loop itself (tl.range also pipelines the index loads, the
    # launch's num_stages only loads feeding a dot); WARP_SPEC: Triton's automatic warp specialisation
    # (producer/consumer warps).  Both Hopper tuning knobs, swept by scripts/gpu_sparse_speed.py.
    for i in tl.range(0, nb, num_stages=LOOP_STAGES, warp_specialize=WARP_SPEC):
        start = tl.load(BO + meta * MAX_B + i)
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n >= 0) & (offs_n < N)
        if K_ROWS:  # load (BN, D) rows (contiguous D) and transpose in shared memory
            k = tl.trans(tl.load(k_base + offs_n[:, None].to(tl.int64) * skn + offs_d[None, :],
                                 mask=kv_ok[:, None], other=0.0))
        else:
            k = tl.load(k_base + offs_n[None, :].to(tl.int64) * skn + offs_d[:, None],
                        mask=kv_ok[None, :], other=0.0)                      # (D, BN)
        qk = tl.dot(q, k) * qk_scale                                          # (BM, BN) log2 units
        # only blocks crossing the diagonal (or hanging off either end) need the mask
        if ALWAYS_MASK or (start + BLOCK_N - 1 > row_lo) or (start < 0):
            qk = tl.where((offs_n[None, :] <= offs_m[:, None]) & kv_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing kept yet
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * svn + offs_d[None, :],
                    mask=kv_ok[:, None], other=0.0)                          # (BN, D)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    # ---- 2. gathered single columns --------------------------------------------------
    for j in tl.range(0, nc, BLOCK_N, num_stages=LOOP_STAGES, warp_specialize=WARP_SPEC):
        offs_c = j + tl.arange(0, BLOCK_N)
        c_ok = offs_c < nc
        cols = tl.load(CI + meta * MAX_C + offs_c, mask=c_ok, other=0)
        if K_ROWS:
            k = tl.trans(tl.load(k_base + cols[:, None].to(tl.int64) * skn + offs_d[None, :],
                                 mask=c_ok[:, None], other=0.0))
        else:
            k = tl.load(k_base + cols[None, :].to(tl.int64) * skn + offs_d[:, None],
                        mask=c_ok[None, :], other=0.0)
        qk = tl.dot(q, k) * qk_scale
        qk = tl.where(c_ok[None, :] & (cols[None, :] <= offs_m[:, None]), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(v_base + cols[:, None].to(tl.int64) * svn + offs_d[None, :],
                    mask=c_ok[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # heads/rows with no work (dense heads) write 0
    out = acc / l_i[:, None]
    tl.store(O + b * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * son + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=offs_m[:, None] < N)


# Launch configurations (num_warps, num_stages) per (head_dim, BLOCK_M, BLOCK_N).  Measured on H200 at
# D=128 (results/kernels-h200-run2-configs.json): 128-row tiles want 8 warps and 3 stages (128x128: 409
# TFLOP/s vs 394 with 2 stages); 64-row tiles 4 warps, 3 stages.  D=64 (Qwen2.5-0.5B class, 14 q / 2 kv
# heads) starts from the same guesses; `scripts/gpu_sparse_speed.py` sweeps them and prints the rows to
# paste here.  `set_kernel_config` overrides an entry at run time (benchmarks, sweeps).
KERNEL_CONFIGS: dict[tuple[int, int, int], tuple[int, int]] = {
    (128, 128, 128): (8, 3), (128, 64, 64): (4, 3),
    # head_dim 128 (8B shape, 32q/8kv): 128x64 with one warpgroup and 2 stages is the fastest tile at both
    # lengths (results/experiments/sparse-sweep-h200.json: 34.0 vs 35.2 ms at 128K, 7.81 vs 9.66 ms at 32K
    # for 128x128 w8 s3); 3 stages at 128x64 w4 spill (50.9 ms)
    (128, 128, 64): (4, 2),
    # head_dim 64 (14q/2kv, H200 sweep, results/raw/sparse-speed-h200.log): 4 warps beat 8 at both
    # tile shapes; 128x64 w4 s3 is best at 31K (2.13 ms) and within 1 % of 128x128 at 16K (1.11 vs 1.10)
    (64, 128, 128): (4, 3), (64, 128, 64): (4, 3), (64, 64, 64): (4, 3),
}


# Tile shape per (head_dim, prompt length): rows (N upper bound or None for "any longer", (BLOCK_M,
# BLOCK_N)), the first row whose bound is >= N wins; pattern caps (block-sparse: 64-key blocks) still
# apply after it (`attention.default_blocks`).  The sweep in scripts/gpu_sparse_speed.py prints the best
# tile per (head_dim, N): edit the numbers here.  Head dims not listed use DEFAULT_TILES.
TILE_TABLE: dict[int, tuple[tuple[int | None, tuple[int, int]], ...]] = {
    128: ((None, (128, 64)),),   # sweep of 2026-12-03: beats 128x128 at 32K (1.24x) and 128K (1.03x)
    64: ((24576, (128, 64)), (None, (128, 64))),   # 16K: 128x64 within 1 % of 128x128; 31K: best
}
DEFAULT_TILES = (128, 128)
# Hopper loop options per (head_dim, BLOCK_M, BLOCK_N): (tl.range num_stages or None, warp_specialize).
# Empty = Triton's defaults (the launch key of every default launch is unchanged); paste the sweep's
# winner here only if it beats the plain config by more than its run-to-run spread.
LOOP_CONFIGS: dict[tuple[int, int, int], tuple[int | None, bool]] = {}


def tiles_for(head_dim: int, n: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) from TILE_TABLE for this head_dim and prompt length."""
    for bound, tiles in TILE_TABLE.get(int(head_dim), ()):
        if bound is None or n <= bound:
            return tiles
    return DEFAULT_TILES


def set_kernel_config(head_dim: int, block_m: int, block_n: int, num_warps: int, num_stages: int) -> None:
    """Use (num_warps, num_stages) for this (head_dim, BLOCK_M, BLOCK_N) from now on (a tuning hook)."""
    KERNEL_CONFIGS[(int(head_dim), int(block_m), int(block_n))] = (int(num_warps), int(num_stages))


def _default_config(block_m: int, d: int, block_n: int | None = None):
    # Hopper: one warpgroup (4 warps) per 64 query rows keeps wgmma M=64 tiles
    hit = KERNEL_CONFIGS.get((d, block_m, block_n if block_n is not None else block_m))
    if hit is not None:
        return hit
    return (4 if block_m <= 64 else 8), 3


def _check(q, k, index):
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"query heads {Hq} not a multiple of kv heads {Hkv}")
    if index.shape != (B, Hq, triton.cdiv(N, index.block_m)) or index.n != N:
        raise ValueError(f"index {index.shape} (n={index.n}) does not fit q {tuple(q.shape)}")
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {D} not supported by the Triton kernel (16/32/64/128/256)")


def _launch_args(q, k, v, o, index: SparseIndex, scale: float, *, num_warps=None, num_stages=None,
                 heavy_first=True, always_mask=False, k_rows=True, loop_stages=None, warp_specialize=False):
    """(grid, positional args, keyword args) of one `_sparse_attn_fwd` launch: split out so a test can
    compute Triton's specialisation key for any input without a GPU."""
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    bc, bo = index.block_count.contiguous(), index.block_offset.contiguous()
    cc, ci = index.column_count.contiguous(), index.column_index.contiguous()
    M = bc.shape[-1]
    nw, ns = _default_config(index.block_m, D, index.block_n)
    nw, ns = num_warps or nw, num_stages or ns
    if loop_stages is None and not warp_specialize:
        loop_stages, warp_specialize = LOOP_CONFIGS.get((D, index.block_m, index.block_n), (None, False))
    args = (q, k, v, o, bc, bo, cc, ci,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            N, Hq, Hq // Hkv, M, bo.shape[-1], ci.shape[-1], scale * 1.4426950408889634)
    kwargs = dict(BLOCK_M=index.block_m, BLOCK_N=index.block_n, HEAD_D=D, HEAVY_FIRST=heavy_first,
                  ALWAYS_MASK=always_mask, K_ROWS=k_rows, num_warps=nw, num_stages=ns,
                  LOOP_STAGES=loop_stages, WARP_SPEC=bool(warp_specialize))   # explicit: no reliance on defaults
    return (B * Hq, M), args, kwargs


def sparse_attention_triton(q, k, v, index: SparseIndex, scale: float | None = None, *,
                            num_warps: int | None = None, num_stages: int | None = None,
                            heavy_first: bool = True, always_mask: bool = False, k_rows: bool = True,
                            dense_sdpa: bool = True, loop_stages: int | None = None,
                            warp_specialize: bool = False):
    """q (B,Hq,N,D), k/v (B,Hkv,N,D) -> (B,Hq,N,D); keys per `index` (causal)."""
    _check(q, k, index)
    D = q.shape[-1]
    scale = D ** -0.5 if scale is None else scale
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    o = torch.empty_like(q)
    grid, args, kwargs = _launch_args(q, k, v, o, index, scale, num_warps=num_warps, num_stages=num_stages,
                                      heavy_first=heavy_first, always_mask=always_mask, k_rows=k_rows,
                                      loop_stages=loop_stages, warp_specialize=warp_specialize)
    _sparse_attn_fwd[grid](*args, **kwargs)
    if dense_sdpa and index.dense_head_ids:   # a host tuple: no read-back of the mask
        from .dense import dense_heads_sdpa
        dense_heads_sdpa(q, k, v, o, index.dense_head_ids, scale)
    return o
