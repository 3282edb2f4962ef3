"""Batch-invariant attention over a static KV cache for decode, Medusa verify and exact prefill.

Each query sees its keys in *logical* order: positions 0..NPRE-1 sit in contiguous cache slots from
START (the prompt and the accepted tokens), positions NPRE.. come from the query's own ancestor
list ANC (a tree node's ancestors and itself, in depth order, wherever the verify step wrote them).
Keys are reduced in blocks of BN logical positions, with one online softmax, so a query at logical
position p performs exactly the same arithmetic whether it is a 1-token decode step (keys 0..p all
contiguous), node d of a 64-node tree (keys 0..L-1 contiguous, then d+1 ancestors at scattered
slots), a row of a left-padded batch (START = its pad) or a token of a prompt: Medusa's greedy
output is bit-identical to plain greedy decoding, in bf16 too.

Layout: one program per (batch row, tile of NQ queries, kv head). The tile's ROWS = 16 MMA rows hold
NQ queries x the G query heads that share the kv head (GQA read in place, each K/V block loaded once
for all of them). Blocks below every query's key count are loaded once per tile ("shared" loop);
the last blocks are gathered per query (slot from START or from ANC) and applied to that query's
rows only: for the other rows the update is an exact no-op (alpha = exp2(0) = 1, p = 0).

All these kernels launch with ``enable_fp_fusion=False``: a multiply-add contracted into an FMA in
the unmasked loop but not in the masked one (a select sits between them there) would change the
last bit of a score depending on which loop a block went through.

``rope_write`` is the step before: RoPE on q and k with transformers' bf16 rounding order, k/v
stored into the cache at each token's (row, slot), q returned. Both are plain row-wise code, so
they are batch-invariant by construction.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["rope_write", "tree_attention", "tree_attention_reference", "supports_tree_attention"]

_ROWS = 16  # MMA rows per program
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_BN = 64  # logical key positions per block (fixed: the block partition is part of the arithmetic)


@triton.jit
def _rope_write_kernel(QKV, COS, SIN, POS, ROW, SLOT, QO, KC, VC,
                       s_qkv, s_rope, s_qo, skb, skh, sks, svb, svh, svs,
                       Hq, Hkv, HP2: tl.constexpr, D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, HP2)
    d = tl.arange(0, D)
    half: tl.constexpr = D // 2
    h_ok = h < Hq + 2 * Hkv
    # masked lanes still get in-bounds addresses (the CPU interpreter dereferences them)
    base = QKV + m * s_qkv + tl.minimum(h, Hq + 2 * Hkv - 1)[:, None] * D
    x = tl.load(base + d[None, :], mask=h_ok[:, None], other=0.0)  # (HP2, D) q, k and v heads
    xr = tl.load(base + ((d + half) % D)[None, :], mask=h_ok[:, None], other=0.0)
    dt = x.dtype
    pos = tl.load(POS + m).to(tl.int64)
    cos = tl.load(COS + pos * s_rope + d).to(dt).to(tl.float32)  # tables are fp32; HF casts them first
    sin = tl.load(SIN + pos * s_rope + d).to(dt).to(tl.float32)
    xr = xr.to(tl.float32)
    rot = tl.where(d[None, :] < half, -xr, xr)  # rotate_half (negation is exact in any precision)
    t1 = (x.to(tl.float32) * cos[None, :]).to(dt)
    t2 = (rot * sin[None, :]).to(dt)
    y = (t1.to(tl.float32) + t2.to(tl.float32)).to(dt)
    tl.store(QO + m * s_qo + tl.minimum(h, Hq - 1)[:, None] * D + d[None, :], y, mask=(h < Hq)[:, None])
    row = tl.load(ROW + m).to(tl.int64)
    slot = tl.load(SLOT + m).to(tl.int64)
    kh = tl.minimum(tl.maximum(h - Hq, 0), Hkv - 1).to(tl.int64)
    tl.store(KC + row * skb + kh[:, None] * skh + slot * sks + d[None, :], y,
             mask=((h >= Hq) & (h < Hq + Hkv))[:, None])
    vh = tl.minimum(tl.maximum(h - Hq - Hkv, 0), Hkv - 1).to(tl.int64)
    tl.store(VC + row * svb + vh[:, None] * svh + slot * svs + d[None, :], x,
             mask=((h >= Hq + Hkv) & h_ok)[:, None])


def rope_write(qkv, cos_table, sin_table, pos, rows, slots, k_cache, v_cache, n_head: int, n_kv: int):
    """qkv (B, T, (Hq+2Hkv)*D) -> q (B, T, Hq, D) with RoPE; k (RoPE'd) and v are written to
    ``k_cache/v_cache[rows, :, slots]``. cos/sin tables (S, D) fp32; pos, slots (B, T); rows (B,) or
    (B, T) contiguous (precomputed once per forward, it saves a copy per layer)."""
    B, T, W = qkv.shape
    D = k_cache.shape[-1]
    if W != (n_head + 2 * n_kv) * D:
        raise ValueError(f"rope_write: qkv width {W} != (Hq + 2*Hkv) * D = {(n_head + 2 * n_kv) * D}")
    qkv2 = qkv.reshape(B * T, W)
    if qkv2.stride(-1) != 1:
        qkv2 = qkv2.contiguous()
    q = torch.empty(B * T, n_head, D, dtype=qkv.dtype, device=qkv.device)
    if rows.numel() != B * T:  # (B,) -> one row per token (an expand may reshape to stride 0: copy)
        rows = rows.reshape(B, 1).expand(B, T).contiguous()
    rows_bt = rows.reshape(-1)
    _rope_write_kernel[(B * T,)](
        qkv2, cos_table, sin_table, pos.reshape(-1).contiguous(), rows_bt, slots.reshape(-1).contiguous(), q, k_cache, v_cache,
        qkv2.stride(0), cos_table.stride(0), q.stride(0), *k_cache.stride()[:3], *v_cache.stride()[:3],
        n_head, n_kv, HP2=triton.next_power_of_2(n_head + 2 * n_kv), D=D, num_warps=2, enable_fp_fusion=False)
    return q.view(B, T, n_head, D)


@triton.jit
def _mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST only under TRITON_INTERPRET, whose tl.dot (numpy matmul) mishandles bf16 and, on some CPUs,
    # rounds a row differently by its position in the tile: fp64 products are exact and their fp64 sum
    # rounds to one fp32 value whatever the order (kernels.invariant_linear._interpret_dot)
    if UPCAST:
        return tl.dot(a.to(tl.float64), b.to(tl.float64)).to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _online_update(m_i, l_i, acc, s, v, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # s: (ROWS, BN) scores already in log2 units; masked entries are -inf
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet stays at zero
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, PREC, UPCAST)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["T", "A"])  # one binary for 1 query or a 64-node tree
def _tree_attn_kernel(Q, KC, VC, O, START, NPRE, NKEYS, ANC, T, A, qk_scale,
                      sqb, sqt, sqh, skb, skh, sks, svb, svh, svs, sob, sot, soh, snb, sab, sat,
                      G: tl.constexpr, NQ: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr,
                      BN: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t0 = tl.program_id(1) * NQ
    kvh = tl.program_id(2).to(tl.int64)
    r = tl.arange(0, ROWS)
    jr = r // G  # which query of the tile each MMA row belongs to
    qi = t0 + jr
    hq = kvh * G + (r % G)
    row_ok = (jr < NQ) & (qi < T)
    d = tl.arange(0, D)
    q = tl.load(Q + b * sqb + qi[:, None].to(tl.int64) * sqt + hq[:, None] * sqh + d[None, :],
                mask=row_ok[:, None], other=0.0)  # (ROWS, D)
    start = tl.load(START + b).to(tl.int64)
    npre = tl.load(NPRE + b)
    nk = tl.load(NKEYS + b * snb + qi, mask=row_ok, other=0)  # (ROWS,) keys per query
    k_base = KC + b * skb + kvh * skh
    v_base = VC + b * svb + kvh * svh
    offs = tl.arange(0, BN)

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, D], dtype=tl.float32)
    nk_min = tl.min(tl.where(row_ok, nk, 2147483647))
    nk_max = tl.max(nk)
    shared_end = tl.minimum(nk_min, npre) // BN
    # 1. blocks every query of the tile sees in full, all in the contiguous prefix: loaded once
    for blk in range(0, shared_end):
        slot = start + blk * BN + offs
        k = tl.load(k_base + slot[:, None] * sks + d[None, :])
        v = tl.load(v_base + slot[:, None] * svs + d[None, :])
        s = _mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, PREC, UPCAST)
    # 2. the rest, per query: logical position -> slot (prefix or ancestor list), masked to its keys
    for blk in range(shared_end, tl.cdiv(nk_max, BN)):
        pos = blk * BN + offs
        in_pre = pos < npre
        a_idx = pos - npre
        for j in tl.static_range(NQ):
            qj = t0 + j
            qj_ok = (offs * 0 + qj) < T  # as a vector: the interpreter rejects scalar & vector masks
            nkj = tl.where(qj < T, tl.load(NKEYS + b * snb + tl.minimum(qj, T - 1)), 0)
            a_ok = (a_idx >= 0) & (a_idx < A) & qj_ok
            anc = tl.load(ANC + b * sab + qj * sat + a_idx, mask=a_ok, other=0).to(tl.int64)
            slot = tl.where(in_pre, start + pos, anc)
            valid = pos < nkj
            k = tl.load(k_base + slot[:, None] * sks + d[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(v_base + slot[:, None] * svs + d[None, :], mask=valid[:, None], other=0.0)
            s = _mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
            s = tl.where((jr == j)[:, None] & valid[None, :], s, float("-inf"))
            m_i, l_i, acc = _online_update(m_i, l_i, acc, s, v, PREC, UPCAST)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + b * sob + qi[:, None].to(tl.int64) * sot + hq[:, None] * soh + d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])


_PLACEHOLDERS: dict = {}


def _placeholder(device) -> torch.Tensor:
    t = _PLACEHOLDERS.get(device)
    if t is None:
        t = _PLACEHOLDERS[device] = torch.zeros(1, dtype=torch.long, device=device)
    return t


def supports_tree_attention(n_head: int, n_kv: int, head_dim: int) -> str | None:
    """None if the kernel handles this attention shape, else why not."""
    G = n_head // n_kv
    if n_head % n_kv or G > _ROWS:
        return f"{n_head} query heads over {n_kv} kv heads (needs a group of at most {_ROWS})"
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head_dim {head_dim} (needs a power of two >= 16)"
    return None


def tree_attention(q, k_cache, v_cache, start, n_prefix, n_keys, ancestors=None, scale: float | None = None):
    """q (B, T, Hq, D); caches (Bc >= B, Hkv, S, D); start, n_prefix (B,); n_keys (B, T); ancestors
    (B, T, A) slots (or None). Query (b, t) attends to logical keys 0..n_keys[b, t]-1 where position
    j < n_prefix[b] is slot start[b] + j and j >= n_prefix[b] is slot ancestors[b, t, j - n_prefix[b]].
    -> (B, T, Hq, D)."""
    B, T, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    why = supports_tree_attention(Hq, Hkv, D)
    if why:
        raise ValueError(f"tree_attention does not support {why}")
    G = Hq // Hkv
    if ancestors is None:  # A = 0: never read (a decode step launches no kernel to build it)
        ancestors, A, sab, sat = _placeholder(q.device), 0, 0, 0
    else:
        if ancestors.stride(-1) != 1:
            ancestors = ancestors.contiguous()
        A, sab, sat = ancestors.shape[-1], ancestors.stride(0), ancestors.stride(1)
    o = torch.empty_like(q)
    n_keys = n_keys.expand(B, T) if n_keys.shape != (B, T) else n_keys
    if n_keys.stride(-1) != 1:
        n_keys = n_keys.contiguous()
    start, n_prefix = start.reshape(B).contiguous(), n_prefix.reshape(B).contiguous()
    NQ = _ROWS // G
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (B, triton.cdiv(T, NQ), Hkv)
    _tree_attn_kernel[grid](
        q, k_cache, v_cache, o, start, n_prefix, n_keys, ancestors, T, A, scale * 1.4426950408889634,
        *q.stride()[:3], *k_cache.stride()[:3], *v_cache.stride()[:3], *o.stride()[:3],
        n_keys.stride(0), sab, sat,
        G=G, NQ=NQ, ROWS=_ROWS, D=D, BN=_BN, PREC=prec, UPCAST=_INTERPRET, num_warps=4, num_stages=2,
        enable_fp_fusion=False)
    return o


def tree_attention_reference(q, k_cache, v_cache, start, n_prefix, n_keys, ancestors=None, scale=None,
                             dtype=torch.float64):
    """Per-query gather of the logical key list, softmax in ``dtype`` (float64 by default)."""
    B, T, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros(B, T, Hq, D, dtype=dtype, device=q.device)
    n_keys = n_keys.expand(B, T)
    for b in range(B):
        st, npre = int(start[b]), int(n_prefix[b])
        for t in range(T):
            n = int(n_keys[b, t])
            slots = [st + j if j < npre else int(ancestors[b, t, j - npre]) for j in range(n)]
            idx = torch.tensor(slots, dtype=torch.long, device=q.device)
            k = k_cache[b][:, idx].to(dtype).repeat_interleave(G, 0)  # (Hq, n, D)
            v = v_cache[b][:, idx].to(dtype).repeat_interleave(G, 0)
            w = torch.softmax((q[b, t].to(dtype)[:, None] @ k.transpose(1, 2)) * scale, -1)  # (Hq, 1, n)
            out[b, t] = (w @ v)[:, 0]
    return out
