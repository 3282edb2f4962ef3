"""Batch-invariant linear layers and RMSNorm for exact greedy decoding.

Why: cuBLAS picks a different kernel (GEMV, split-K, another tile) for a 1-token decode step than
for a 64-node Medusa verify step, so the same row comes out with different rounding and greedy
Medusa drifts from plain greedy in bf16. Here every output row is computed by the same instruction
sequence whatever the number of rows M: the tile sizes and the split-K chunks depend only on the
weight's shape (N, K) and the GPU, never on M, the K loop always runs in the same order and the
split-K partials are summed in chunk order. Row i of ``linear(x)``
is therefore bit-identical whether x holds 1 row or 64 (tested on the GPU in tests/test_exact.py).

Epilogues keep transformers' rounding order (each op rounds to the activation dtype):
- ``residual``: ``r + bf16(x @ w.T + b)``, the attention / MLP output plus the skip connection;
- ``linear_silu_mul``: ``bf16(silu(bf16(x @ wg.T))) * bf16(x @ wu.T)`` from the fused gate/up weight,
  so the MLP's activation never round-trips through memory.
``rms_norm`` is one program per row (the row's sum of squares is one fixed-order reduction).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

__all__ = ["linear", "linear_silu_mul", "rms_norm", "linear_reference", "rms_norm_reference"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_BM = 16  # rows per tile (small weights; see _row_tile): fixed per weight, never chosen by M


@triton.jit
def _epilogue(acc, acc_u, B, R, Y, rm, rn, M, N, srm, sym,
              HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, SILU_MUL: tl.constexpr):
    m_ok = rm < M
    n_ok = rn < N
    out_ty = Y.dtype.element_ty
    if HAS_BIAS:
        acc += tl.load(B + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(out_ty)
    if SILU_MUL:
        g = y.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(out_ty)
        y = (act.to(tl.float32) * acc_u.to(out_ty).to(tl.float32)).to(out_ty)
    if HAS_RES:
        r = tl.load(R + rm[:, None].to(tl.int64) * srm + rn[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        y = (r.to(tl.float32) + y.to(tl.float32)).to(out_ty)
    tl.store(Y + rm[:, None].to(tl.int64) * sym + rn[None, :], y, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _interpret_dot(a, b):
    """tl.dot under TRITON_INTERPRET only: numpy's matmul there (i) mishandles bf16 and (ii) rounds a row
    differently depending on its position in the tile on some CPUs (OpenBLAS micro-kernels; seen on AMD
    EPYC), which would break the row invariance the tests check.  Products of fp32 values are exact in
    fp64 and an fp64 sum rounds to the same fp32 whatever its order (but for ~1e-8-rare near-ties)."""
    return tl.dot(a.to(tl.float64), b.to(tl.float64)).to(tl.float32)


# M is never specialised (Triton would compile M == 1 separately): one binary serves every row count
@triton.jit(do_not_specialize=["M"])
def _linear_kernel(X, W, B, R, Y, P, M, N, K, K_SPLIT, sxm, swn, srm, sym,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, SILU_MUL: tl.constexpr, SPLIT: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   PREC: tl.constexpr, UPCAST: tl.constexpr):
    # axis 0 = row tiles, so the programs sharing one weight tile run side by side (L2 serves it once)
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    ps = tl.program_id(2)  # K chunk (split-K); chunk bounds depend on K only, never on M
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    k_end = tl.minimum(K, (ps + 1) * K_SPLIT)
    for k0 in range(ps * K_SPLIT, k_end, BK):
        kk = k0 + rk
        k_ok = kk < k_end
        x = tl.load(X + rm[:, None].to(tl.int64) * sxm + kk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(W + rn[None, :].to(tl.int64) * swn + kk[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:  # TRITON_INTERPRET: see _interpret_dot
            acc += _interpret_dot(x, w)
        else:
            acc += tl.dot(x, w, input_precision=PREC)  # (BM, BK) @ (BK, BN)
        if SILU_MUL:  # up-projection rows sit N rows below the gate rows in the fused weight
            wu = tl.load(W + (rn[None, :] + N).to(tl.int64) * swn + kk[:, None],
                         mask=n_ok[None, :] & k_ok[:, None], other=0.0)
            if UPCAST:
                acc_u += _interpret_dot(x, wu)
            else:
                acc_u += tl.dot(x, wu, input_precision=PREC)
    if SPLIT == 1:
        _epilogue(acc, acc_u, B, R, Y, rm, rn, M, N, srm, sym, HAS_BIAS, HAS_RES, SILU_MUL)
    else:  # fp32 partials (SPLIT, 2, M, N); _splitk_reduce adds them in chunk order
        offs = rm[:, None].to(tl.int64) * N + rn[None, :]
        ok = m_ok[:, None] & n_ok[None, :]
        tl.store(P + (ps * 2).to(tl.int64) * M * N + offs, acc, mask=ok)
        if SILU_MUL:
            tl.store(P + (ps * 2 + 1).to(tl.int64) * M * N + offs, acc_u, mask=ok)


@triton.jit(do_not_specialize=["M"])
def _splitk_reduce(P, B, R, Y, M, N, srm, sym,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, SILU_MUL: tl.constexpr, SPLIT: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for s in tl.static_range(SPLIT):  # fixed order: the sum does not depend on scheduling
        acc += tl.load(P + (2 * s) * M * N + offs, mask=ok, other=0.0)
        if SILU_MUL:
            acc_u += tl.load(P + (2 * s + 1) * M * N + offs, mask=ok, other=0.0)
    _epilogue(acc, acc_u, B, R, Y, rm, rn, M, N, srm, sym, HAS_BIAS, HAS_RES, SILU_MUL)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _row_tile(N: int, K: int) -> int:
    """Rows per tile from the weight's shape only (never from M). Big weights take 32 or 64 rows: the
    64-row Medusa verify step then reads them 2-4x less often, for 1-3 % on a 1-row step (H200,
    results/invariant-linear-h200.json: Llama-3-8B gate_up 113 -> 72 us, down 64 -> 39 us at 64 rows)."""
    if K >= 8192:
        return 64
    if N >= 8192 and K >= 2048:
        return 32
    return _BM


def _tiles(N: int, K: int, sms: int) -> tuple[int, int, int, int, int]:
    """(BN, BK, split, num_warps, num_stages) from the weight's shape and the GPU only (never from M).

    Split-K gives a 1-row decode step enough programs to stream the weight at full bandwidth
    (e.g. Llama-3-8B's o_proj has 64 column tiles for 132 SMs); the chunks are fixed by K and summed
    in a fixed order, so the rounding is still the same for any number of rows."""
    BK = 128 if K >= 1024 else (64 if K >= 64 else max(16, triton.next_power_of_2(K)))
    BN = 64 if N >= 64 else max(16, triton.next_power_of_2(N))
    tiles = triton.cdiv(N, BN)
    split = 1  # measured on an H200 (results/invariant-linear-h200.json): split only long K, to ~1.5 tiles/SM
    while tiles * split * 2 < 3 * sms and K // (split * 2) >= 1024:
        split *= 2
    return BN, BK, split, 4, 3


def _launch(x, w, bias, residual, silu_mul: bool, split_k: int | None = None, bm: int | None = None):
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"linear: x has {x.shape[-1]} features, weight expects {w.shape[1]}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    M, K = x2.shape
    N = w.shape[0] // 2 if silu_mul else w.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    r2 = residual.reshape(M, N) if residual is not None else y
    if r2.stride(-1) != 1:
        r2 = r2.contiguous()
    BN, BK, split, warps, stages = _tiles(N, K, _num_sms(x.device))
    bm = bm or _row_tile(N, K)
    split = split_k or split
    k_split = triton.cdiv(triton.cdiv(K, split), BK) * BK  # chunk length, a multiple of BK
    split = triton.cdiv(K, k_split)
    part = torch.empty(split, 2, M, N, dtype=torch.float32, device=x.device) if split > 1 else y
    flags = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, SILU_MUL=silu_mul, SPLIT=split)
    b = bias if bias is not None else w
    _linear_kernel[(triton.cdiv(M, bm), triton.cdiv(N, BN), split)](
        x2, w, b, r2, y, part, M, N, K, k_split, x2.stride(0), w.stride(0), r2.stride(0), y.stride(0),
        **flags, BM=bm, BN=BN, BK=BK, PREC="ieee" if x.dtype == torch.float32 else "tf32",
        UPCAST=_INTERPRET, num_warps=warps, num_stages=stages, enable_fp_fusion=False)
    if split > 1:
        _splitk_reduce[(triton.cdiv(M, bm), triton.cdiv(N, BN))](
            part, b, r2, y, M, N, r2.stride(0), y.stride(0), **flags, BM=bm, BN=BN,
            num_warps=4, enable_fp_fusion=False)
    return y.reshape(*lead, N)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None, split_k: int | None = None) -> torch.Tensor:
    """``residual + (x @ w.T + bias)`` with row-invariant rounding. x (..., K), w (N, K) -> (..., N).
    ``split_k``: override the K-chunk count (default: from the weight's shape and the GPU)."""
    return _launch(x, w, bias, residual, False, split_k)


def linear_silu_mul(x: torch.Tensor, w13: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """``silu(x @ wg.T) * (x @ wu.T)`` where w13 = cat([wg, wu]) is (2I, K). -> (..., I)."""
    if w13.shape[0] % 2:
        raise ValueError(f"linear_silu_mul needs the fused gate/up weight (2I, K), got {tuple(w13.shape)}")
    return _launch(x, w13, None, None, True, split_k)


@triton.jit
def _rms_norm_kernel(X, W, Y, H, sx, sy, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < H
    x = tl.load(X + row * sx + offs, mask=ok, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=0) / H
    out_ty = Y.dtype.element_ty
    xn = (x * (1.0 / tl.sqrt(var + eps))).to(out_ty)  # transformers: normalise in fp32, cast, then weight
    w = tl.load(W + offs, mask=ok, other=0.0)
    tl.store(Y + row * sy + offs, (w.to(tl.float32) * xn.to(tl.float32)).to(out_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, one program per row. x (..., H), weight (H,)."""
    H = x.shape[-1]
    x2 = x.reshape(-1, H)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    _rms_norm_kernel[(x2.shape[0],)](x2, weight, y, H, x2.stride(0), y.stride(0), eps,
                                     BLOCK=triton.next_power_of_2(H), num_warps=4 if H >= 1024 else 2,
                                     enable_fp_fusion=False)
    return y.reshape(x.shape)


def linear_reference(x, w, bias=None, residual=None, silu_mul: bool = False, dtype=torch.float64):
    """The same math in ``dtype`` (float64 by default) without intermediate rounding."""
    xd, wd = x.to(dtype), w.to(dtype)
    if silu_mul:
        g, u = (xd @ wd.T).chunk(2, dim=-1)
        return torch.nn.functional.silu(g) * u
    y = xd @ wd.T
    if bias is not None:
        y = y + bias.to(dtype)
    return y if residual is None else residual.to(dtype) + y


def rms_norm_reference(x, weight, eps, dtype=torch.float64):
    xd = x.to(dtype)
    return weight.to(dtype) * xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)
