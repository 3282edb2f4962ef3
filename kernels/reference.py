"""Pure-PyTorch sparse attention: the contract the Triton kernel must match, runnable anywhere.

Processes query blocks in chunks: for each chunk it builds the kept-key mask of those rows only
(`kept_mask(index, rows=...)`, R×N) and runs a masked softmax, so memory is O(R·N), never N×N.
GQA reads kv head h // (Hq // Hkv) through broadcasting (no repeat_kv copy).  Accumulates in fp32
(fp64 inputs stay fp64) and returns the input dtype.
"""
from __future__ import annotations

import torch

from .index import SparseIndex, kept_mask


def _attend_rows(q, k, v, mask, scale):
    """q (B,Hq,R,D), k/v (B,Hkv,N,D), mask (B,Hq,R,N) -> (B,Hq,R,D) with GQA broadcasting."""
    B, Hq, R, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    G = Hq // Hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qg = q.to(acc).view(B, Hkv, G, R, D)
    s = torch.matmul(qg, k.to(acc)[:, :, None].transpose(-1, -2)) * scale         # (B,Hkv,G,R,N)
    s = s.masked_fill(~mask.view(B, Hkv, G, R, N), float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # a row with no kept key (cannot happen with our builders) -> 0
    return torch.matmul(p, v.to(acc)[:, :, None]).view(B, Hq, R, D)


def sparse_attention_reference(q, k, v, index: SparseIndex, scale: float | None = None,
                               chunk_rows: int | None = None):
    """Attention of q (B,Hq,N,D) over exactly the keys `index` keeps (causal). -> (B,Hq,N,D)."""
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    if chunk_rows is None:  # ~64M score elements per chunk, whole query blocks
        chunk_rows = max(index.block_m, ((1 << 26) // max(1, B * Hq * N)) // index.block_m * index.block_m)
    out = torch.empty_like(q)
    for r0 in range(0, N, chunk_rows):
        r1 = min(N, r0 + chunk_rows)
        mask = kept_mask(index, N, rows=slice(r0, r1))                               # (B,Hq,R,N)
        out[:, :, r0:r1] = _attend_rows(q[:, :, r0:r1], k, v, mask, scale).to(q.dtype)
    return out


def dense_causal_reference(q, k, v, scale: float | None = None, mask: torch.Tensor | None = None,
                           dtype=torch.float64):
    """Test helper: dense attention in `dtype` (default float64), causal, optionally restricted to a
    (B,Hq,N,N) bool `mask` of kept keys.  Materialises N×N: small N only."""
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    causal = torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    m = causal if mask is None else (mask & causal)
    if m.dim() == 2:
        m = m.expand(B, Hq, N, N)
    return _attend_rows(q.to(dtype), k.to(dtype), v.to(dtype), m, scale)
