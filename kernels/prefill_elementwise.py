"""The memory-bound steps around a fresh prompt chunk's GEMMs and attention, as one Triton launch each.

Why: on an H200 the dense prefill of a 31744-token prompt through the random-weight Qwen2.5-Coder-0.5B
shape took 167 ms, of which 32.4 ms were eager elementwise kernels (cuDNN attention 95.6, GEMMs 31.4;
results/experiments/profile-prefill-qwen-synthetic-h200.json). They take PyTorch's non-vectorised
``elementwise_kernel<128, 4>`` path because their operands broadcast (RoPE's (B, T, 1, D) cos/sin,
RMSNorm's weight) or are strided views of a fused GEMM output (q/k/v of the qkv GEMM, the gate and up
halves of w13), plus the rotate_half ``cat``, a ``neg`` and the KV-cache ``index_put``. Here:

- ``rope_qkv``: RoPE on q and k straight from the qkv GEMM output (read in place), q written once in
  a dense (B, T, Hq, D) buffer, k and v written once to dense buffers AND to their KV-cache slots
  (the ``kc[rows, :, slots] = k`` index_put). Bit-identical to the eager
  ``bf16(bf16(x * cos) + bf16(rotate_half(x) * sin))``: fp32 math per op, round to nearest even after
  each op (a product of two bf16 is exact in fp32), no FMA contraction.
  q/k/v come back as (B, H, T, D) views of (B, T, H, D) storage: cuDNN's SDPA allocates its output
  in q's layout and the sparse kernel's ``empty_like(q)`` does too, so the attention output is then
  (B, T, Hq*D) in memory and the o_proj input ``y.transpose(1, 2).reshape`` stays a view (a
  (B, Hq, T, D)-contiguous q would make it a copy).
- ``silu_mul``: ``bf16(bf16(silu(g)) * u)`` over the (M, 2I) gate/up GEMM output. Within bf16
  rounding of eager, not guaranteed bit-identical: it uses libdevice ``expf`` and an IEEE divide like
  PyTorch's CUDA silu (so it should agree bit for bit there; scripts/gpu/bench_prefill_fat.py counts
  the mismatches), but the CPU interpreter's numpy exp and PyTorch's CPU silu differ in the last fp32
  bit now and then.
- ``scale_rows``: ``bf16(w * x)`` for RMSNorm's weight (the eager broadcast multiply), bit-identical.

The CPU interpreter (TRITON_INTERPRET=1) truncates fp32 -> bf16 instead of rounding to nearest even, so
there ``_round`` rounds by integer arithmetic (flag ``RNE``); on a GPU the native conversion is RNE.
Each wrapper has an eager reference next to it (``*_reference``) that the tests compare against
(tests/test_prefill_elementwise.py). Used by runtime.model.layer_forward for a fresh prompt chunk on
CUDA only: decode / verify steps (CUDA-graph captured) keep their eager ops.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

try:  # libdevice expf, the same exp as PyTorch's CUDA silu (absent from the CPU interpreter)
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - older Triton
    libdevice = None

__all__ = ["rope_qkv", "rope_qkv_reference", "silu_mul", "silu_mul_reference", "scale_rows",
           "scale_rows_reference", "supports"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _tiles(n: int, elems: int = 4096) -> tuple[int, int]:
    """(rows, columns) of a program's tile for rows of n: the columns a power of two dividing n where
    one of 128..1024 does (Qwen2.5-0.5B: I = 4864 = 19 * 256, H = 896 = 7 * 128), so no lane idles."""
    bn = n & -n
    bn = 1024 if bn < 128 else min(bn, 1024)
    return max(1, elems // bn), bn


def _rows_launch(x: torch.Tensor, n_out: int, block_m: int | None, block_n: int | None):
    """What the row-wise kernels share: x (..., K) as unit-stride rows (M, K), an (M, n_out) output of x's
    dtype, the (M, n_out) tile grid and its tile sizes (``_tiles`` unless given)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    bm, bn = _tiles(n_out)
    block_m, block_n = block_m or bm, block_n or bn
    y = torch.empty(M, n_out, dtype=x.dtype, device=x.device)
    return x2, y, (triton.cdiv(M, block_m), triton.cdiv(n_out, block_n)), block_m, block_n


def supports(dtype: torch.dtype, head_dim: int) -> bool:
    """True if these kernels handle this activation dtype and head_dim (a power of two >= 2)."""
    return dtype in _DTYPES and head_dim >= 2 and head_dim & (head_dim - 1) == 0


@triton.jit
def _round(x, DT: tl.constexpr, RNE: tl.constexpr):
    """fp32 x rounded to DT (nearest even), returned as fp32: what one eager DT op stores."""
    if RNE:  # the interpreter's bf16 cast truncates: add half an ulp (ties to even), drop 16 bits
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        return tl.where(x != x, x, b.to(tl.float32, bitcast=True))  # NaN stays NaN
    else:
        return x.to(DT).to(tl.float32)


# -- RoPE + KV-cache write ---------------------------------------------------------------------------
@triton.jit
def _rope_qkv_kernel(QK, V, COS, SIN, ROW, SLOT, QO, KO, VO, KC, VC, T,
                     sqk_b, sqk_t, sv_b, sv_t, sc_b, sc_t, ss_b, ss_t, sl_b, sl_t, sr_b,
                     sqo_b, sqo_t, sko_b, sko_t, skc_b, skc_h, skc_s, svc_b, svc_h, svc_s,
                     Hq: tl.constexpr, Hkv: tl.constexpr, HALF: tl.constexpr, BT: tl.constexpr,
                     RNE: tl.constexpr):
    # one program per (BT tokens, one head of q | k | v, batch row)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    ok = (t < T)[:, None]
    tt = t.to(tl.int64)[:, None]
    d = tl.arange(0, HALF)[None, :]
    DT = QO.dtype.element_ty
    row = tl.load(ROW + b * sr_b).to(tl.int64)
    slot = tl.load(SLOT + b * sl_b + tt * sl_t, mask=ok, other=0).to(tl.int64)  # (BT, 1) cache slot of each token
    if h < Hq + Hkv:  # q or k: RoPE, rotate_half layout (x1, x2) -> (x1 c1 - x2 s1, x2 c2 + x1 s2)
        src = QK + b * sqk_b + tt * sqk_t + h * (2 * HALF) + d
        x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=ok, other=0.0).to(tl.float32)
        c = COS + b * sc_b + tt * sc_t + d
        s = SIN + b * ss_b + tt * ss_t + d
        c1 = tl.load(c, mask=ok, other=0.0).to(tl.float32)
        c2 = tl.load(c + HALF, mask=ok, other=0.0).to(tl.float32)
        s1 = tl.load(s, mask=ok, other=0.0).to(tl.float32)
        s2 = tl.load(s + HALF, mask=ok, other=0.0).to(tl.float32)
        # eager: a = x * cos, b = rotate_half(x) * sin = (-x2, x1) * sin, out = a + b, each rounded
        # to DT; -(x2 * s1) == (-x2) * s1 exactly (round to nearest even is sign-symmetric)
        y1 = _round(_round(x1 * c1, DT, RNE) + _round(-(x2 * s1), DT, RNE), DT, RNE).to(DT)
        y2 = _round(_round(x2 * c2, DT, RNE) + _round(x1 * s2, DT, RNE), DT, RNE).to(DT)
        if h < Hq:
            dst = QO + b * sqo_b + tt * sqo_t + h * (2 * HALF) + d
            tl.store(dst, y1, mask=ok)
            tl.store(dst + HALF, y2, mask=ok)
        else:
            kh = h - Hq
            dst = KO + b * sko_b + tt * sko_t + kh * (2 * HALF) + d
            tl.store(dst, y1, mask=ok)
            tl.store(dst + HALF, y2, mask=ok)
            cache = KC + row * skc_b + kh * skc_h + slot * skc_s + d
            tl.store(cache, y1, mask=ok)
            tl.store(cache + HALF, y2, mask=ok)
    else:  # v: a copy into the dense buffer and the cache
        vh = h - Hq - Hkv
        src = V + b * sv_b + tt * sv_t + vh * (2 * HALF) + d
        v1 = tl.load(src, mask=ok, other=0.0)
        v2 = tl.load(src + HALF, mask=ok, other=0.0)
        dst = VO + b * sko_b + tt * sko_t + vh * (2 * HALF) + d  # VO has KO's shape and strides
        tl.store(dst, v1, mask=ok)
        tl.store(dst + HALF, v2, mask=ok)
        cache = VC + row * svc_b + vh * svc_h + slot * svc_s + d
        tl.store(cache, v1, mask=ok)
        tl.store(cache + HALF, v2, mask=ok)


def rope_qkv(qk, v, cos, sin, rows, slots, k_cache, v_cache, n_head: int, block_t: int = 64):
    """RoPE on q and k, k and v stored into the cache, in one launch.

    qk (B, T, Hq + Hkv, D) and v (B, T, Hkv, D): views with a unit last stride (e.g. of the qkv GEMM
    output, read in place); cos/sin (B, T, 1, D) in qk's dtype; rows (B, 1) or (B,) cache rows; slots
    (B, T); k_cache/v_cache (B', Hkv, S, D). Writes ``k_cache[rows, :, slots] = rope(k)`` and
    ``v_cache[rows, :, slots] = v``. Returns q (B, Hq, T, D), k, v (B, Hkv, T, D): views of dense
    (B, T, H, D) buffers (see the module docstring for why that layout).
    """
    B, T, H, D = qk.shape
    Hkv = H - n_head
    if v.shape != (B, T, Hkv, D) or cos.shape != (B, T, 1, D) or sin.shape != cos.shape:
        raise ValueError(f"rope_qkv: qk {tuple(qk.shape)}, v {tuple(v.shape)}, cos {tuple(cos.shape)} "
                         f"do not fit (B, T, Hq + Hkv, D), (B, T, Hkv, D), (B, T, 1, D)")
    if not supports(qk.dtype, D) or {v.dtype, cos.dtype, sin.dtype, k_cache.dtype, v_cache.dtype} != {qk.dtype}:
        raise ValueError(f"rope_qkv: dtype {qk.dtype} / head_dim {D} not supported, or mixed dtypes")
    # heads at stride D, unit last stride: true of views of the qkv GEMM output; copy anything else
    qk, v = (t if t.stride(-1) == 1 and t.stride(-2) == D else t.contiguous() for t in (qk, v))
    cos, sin = (t.squeeze(2) if t.stride(-1) == 1 else t.squeeze(2).contiguous() for t in (cos, sin))  # (B, T, D)
    if slots.shape != (B, T):
        raise ValueError(f"rope_qkv: slots {tuple(slots.shape)} != (B, T) = {(B, T)}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("rope_qkv: the caches need a unit last stride")
    rows = rows.reshape(B)
    q = torch.empty(B, T, n_head, D, dtype=qk.dtype, device=qk.device)  # (B, T, Hq, D)
    k = torch.empty(B, T, Hkv, D, dtype=qk.dtype, device=qk.device)
    vo = torch.empty_like(k)
    grid = (triton.cdiv(T, block_t), n_head + 2 * Hkv, B)
    _rope_qkv_kernel[grid](
        qk, v, cos, sin, rows, slots, q, k, vo, k_cache, v_cache, T,
        qk.stride(0), qk.stride(1), v.stride(0), v.stride(1), cos.stride(0), cos.stride(1),
        sin.stride(0), sin.stride(1), *slots.stride(), rows.stride(0), q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        Hq=n_head, Hkv=Hkv, HALF=D // 2, BT=block_t, RNE=_INTERPRET and qk.dtype == torch.bfloat16,
        num_warps=4, enable_fp_fusion=False)  # no FMA: eager rounds each product (matters for fp32)
    return q.transpose(1, 2), k.transpose(1, 2), vo.transpose(1, 2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_qkv_reference(qk, v, cos, sin, rows, slots, k_cache, v_cache, n_head: int):
    """The eager ops ``rope_qkv`` replaces (runtime.model.layer_forward's generic path)."""
    qk = qk * cos + rotate_half(qk) * sin
    k_cache[rows.reshape(-1, 1), :, slots] = qk[:, :, n_head:]
    v_cache[rows.reshape(-1, 1), :, slots] = v
    return qk[:, :, :n_head].transpose(1, 2), qk[:, :, n_head:].transpose(1, 2), v.transpose(1, 2)


# -- SiLU(gate) * up -----------------------------------------------------------------------------------
@triton.jit
def _silu_mul_kernel(GU, Y, M, I, s_gu, s_y, BM: tl.constexpr, BN: tl.constexpr, RNE: tl.constexpr,
                     INTERP: tl.constexpr):
    r = tl.program_id(0) * BM + tl.arange(0, BM)
    c = tl.program_id(1) * BN + tl.arange(0, BN)
    ok = (r < M)[:, None] & (c < I)[None, :]
    rr = r.to(tl.int64)[:, None]
    cc = c[None, :]  # no clamping: it would hide the contiguity that vectorises the loads
    DT = Y.dtype.element_ty
    g = tl.load(GU + rr * s_gu + cc, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(GU + rr * s_gu + I + cc, mask=ok, other=0.0).to(tl.float32)
    if INTERP:
        e = tl.exp(-g)
    else:
        e = libdevice.exp(-g)  # expf, as PyTorch's silu; tl.exp is ex2.approx-based
    act = _round(tl.math.div_rn(g, 1.0 + e), DT, RNE)  # F.silu: x / (1 + exp(-x)), IEEE divide, to DT
    tl.store(Y + rr * s_y + cc, _round(act * u, DT, RNE).to(DT), mask=ok)


def silu_mul(gu: torch.Tensor, block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """``silu(g) * u`` with (g, u) = gu.chunk(2, -1): gu (..., 2I) -> (..., I), one pass over gu."""
    I2 = gu.shape[-1]
    if I2 % 2 or gu.dtype not in _DTYPES:
        raise ValueError(f"silu_mul: needs (..., 2I) in {_DTYPES}, got {tuple(gu.shape)} {gu.dtype}")
    lead, I = gu.shape[:-1], I2 // 2
    gu2, y, grid, block_m, block_n = _rows_launch(gu, I, block_m, block_n)
    M = gu2.shape[0]
    if M:
        _silu_mul_kernel[grid](
            gu2, y, M, I, gu2.stride(0), y.stride(0), BM=block_m, BN=block_n,
            RNE=_INTERPRET and gu.dtype == torch.bfloat16, INTERP=_INTERPRET or libdevice is None,
            num_warps=4, enable_fp_fusion=False)
    return y.view(*lead, I)


def silu_mul_reference(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


# -- RMSNorm's weight ----------------------------------------------------------------------------------
@triton.jit
def _scale_rows_kernel(X, W, Y, M, N, s_x, s_y, BM: tl.constexpr, BN: tl.constexpr, RNE: tl.constexpr):
    r = tl.program_id(0) * BM + tl.arange(0, BM)
    c = tl.program_id(1) * BN + tl.arange(0, BN)
    ok = (r < M)[:, None] & (c < N)[None, :]
    rr = r.to(tl.int64)[:, None]
    cc = c[None, :]
    x = tl.load(X + rr * s_x + cc, mask=ok, other=0.0).to(tl.float32)
    w = tl.load(W + cc, mask=cc < N, other=0.0).to(tl.float32)
    DT = Y.dtype.element_ty
    tl.store(Y + rr * s_y + cc, _round(w * x, DT, RNE).to(DT), mask=ok)


def scale_rows(x: torch.Tensor, w: torch.Tensor, block_m: int | None = None,
               block_n: int | None = None) -> torch.Tensor:
    """``w * x`` for x (..., N), w (N,) of x's dtype: one vectorised pass instead of a broadcast."""
    N = x.shape[-1]
    if w.shape != (N,) or w.dtype != x.dtype or x.dtype not in _DTYPES:
        raise ValueError(f"scale_rows: w {tuple(w.shape)} {w.dtype} does not fit x {tuple(x.shape)} {x.dtype}")
    x2, y, grid, block_m, block_n = _rows_launch(x, N, block_m, block_n)
    w = w.contiguous()
    M = x2.shape[0]
    if M:
        _scale_rows_kernel[grid](
            x2, w, y, M, N, x2.stride(0), y.stride(0), BM=block_m, BN=block_n,
            RNE=_INTERPRET and x.dtype == torch.bfloat16, num_warps=4, enable_fp_fusion=False)
    return y.view(x.shape)


def scale_rows_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * x
