"""Attention-mass recall of sparse indexes, without ever building an N×N mask.

recall(head, row r) = Σ_{j kept for r} softmax(q_r·Kᵀ·scale)_j  — the share of row r's dense attention
probability that the sparse kernel keeps.  A head's score is its mean over the scored (late) rows.

Design points:
* Rows are processed in chunks; per chunk the dense probabilities P (B, Hq, R, N) are computed once
  (GQA by broadcasting, fp32) and turned into a prefix sum C (float64, leading zero).  A kept block
  [o, o+BN) then contributes C[o+BN] - C[o] and a gathered column c contributes P[c]: every candidate
  index costs O(R · (MAX_B + MAX_C)) gathers, not O(R · N) mask work, so scoring dozens of candidates
  per layer costs little more than scoring one.
* Causality needs no special care: P is already 0 right of the diagonal.
* The indexes are the ones `kernels.build_index` builds on the same q/k, so the search scores exactly
  what the runtime will run (block rounding, forced sinks/diagonals, online estimation included).
"""
from __future__ import annotations

import torch

from ..kernels import SparseIndex

__all__ = ["score_rows", "attention_probs", "recall_of_indexes", "far_recall_of_indexes", "far_distance"]


def score_rows(n: int, frac: float = 0.125, min_rows: int = 64) -> slice:
    """The late query rows the score averages over: the last max(frac·n, min_rows) rows."""
    r = min(n, max(int(round(frac * n)), min_rows))
    return slice(n - r, n)


def attention_probs(q: torch.Tensor, k: torch.Tensor, r0: int, r1: int, scale: float) -> torch.Tensor:
    """Causal softmax of rows [r0, r1): q (B,Hq,N,D), k (B,Hkv,N,D) -> (B,Hq,R,N) fp32 (fp64 in, fp64 out)."""
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    R = r1 - r0
    qg = q[:, :, r0:r1].to(acc).reshape(B, Hkv, G * R, D)                          # (B,Hkv,G*R,D)
    s = torch.matmul(qg, k.to(acc).transpose(-1, -2)).view(B, Hkv, G, R, N) * scale
    future = torch.arange(N, device=q.device)[None, :] > torch.arange(r0, r1, device=q.device)[:, None]
    s.masked_fill_(future, float("-inf"))
    return torch.softmax(s, dim=-1).view(B, Hq, R, N)


def _recall_chunk(p: torch.Tensor, cs: torch.Tensor, index: SparseIndex, r0: int, r1: int) -> torch.Tensor:
    """Recall of rows [r0, r1) under `index` -> (B, Hq, R) float64.  p (B,Hq,R,N), cs (B,Hq,R,N+1)."""
    N = p.shape[-1]
    dev = p.device
    m = torch.arange(r0, r1, device=dev) // index.block_m                      # (R,) query block of each row
    bc = index.block_count.to(dev)[:, :, m].long()                              # (B,Hq,R)
    bo = index.block_offset.to(dev)[:, :, m].long()                             # (B,Hq,R,MB)
    ok = torch.arange(bo.shape[-1], device=dev) < bc[..., None]
    lo = bo.clamp(0, N)
    hi = (bo + index.block_n).clamp(0, N)
    blocks = (cs.gather(-1, hi) - cs.gather(-1, lo)).masked_fill_(~ok, 0.0).sum(-1)
    cc = index.column_count.to(dev)[:, :, m].long()                             # (B,Hq,R)
    ci = index.column_index.to(dev)[:, :, m].long()                              # (B,Hq,R,MC)
    okc = (torch.arange(ci.shape[-1], device=dev) < cc[..., None]) & (ci >= 0) & (ci < N)
    cols = p.gather(-1, ci.clamp(0, N - 1)).double().masked_fill_(~okc, 0.0).sum(-1)
    rec = blocks + cols
    dh = index.dense_heads.to(dev)
    if bool(dh.any()):
        rec[:, dh] = 1.0
    return rec


def recall_of_indexes(q: torch.Tensor, k: torch.Tensor, indexes: list[SparseIndex], rows: slice,
                      scale: float | None = None, max_elems: int = 1 << 25) -> torch.Tensor:
    """Mean recall over `rows` (and the batch) of every index -> (len(indexes), Hq) float64 on CPU.

    Memory: one chunk of P (fp32) and its prefix sum (fp64), about 12·max_elems bytes."""
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    r_start, r_stop = rows.start or 0, N if rows.stop is None else rows.stop
    chunk = max(1, max_elems // max(1, B * Hq * N))
    total = torch.zeros(len(indexes), Hq, dtype=torch.float64, device=q.device)
    for r0 in range(r_start, r_stop, chunk):
        r1 = min(r_stop, r0 + chunk)
        p = attention_probs(q, k, r0, r1, scale)                                # (B,Hq,R,N)
        cs = torch.nn.functional.pad(torch.cumsum(p, -1, dtype=torch.float64), (1, 0))  # (B,Hq,R,N+1)
        for i, index in enumerate(indexes):
            total[i] += _recall_chunk(p, cs, index, r0, r1).sum((0, 2))
        del p, cs
    return (total / (B * (r_stop - r_start))).cpu()


def far_distance(n: int) -> int:
    """Keys more than this many positions behind a query are "far" (retrieval, not local context)."""
    return max(n // 8, 256)


def far_recall_of_indexes(q: torch.Tensor, k: torch.Tensor, indexes: list[SparseIndex], rows: slice,
                          scale: float | None = None, far: int | None = None, sink: int = 64,
                          max_elems: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Retrieval recall: of the attention mass that `rows` (the prompt's question: the rows the online
    estimation also reads) put on *far* keys — at least `far` positions back, past the first `sink` keys
    that every pattern keeps — the share each index keeps.  -> (recall (len(indexes), Hq) float64,
    far share (Hq,) float64: the far mass's share of those rows' attention), both on CPU.

    Why: a retrieval head puts a few percent of its mass on the needle, so attention-mass recall is
    blind to losing it (measured on Qwen2.5-Coder-0.5B at 2K: A-shape keeps 0 % of the needle mass at
    0.76-0.80 mass recall of the question rows, results/experiments/qwen-needle-diag-2k.json).
    Ratios are mass-weighted over the rows; dense heads keep everything (recall 1)."""
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    far = far_distance(N) if far is None else far
    r_start, r_stop = rows.start or 0, N if rows.stop is None else rows.stop
    chunk = max(1, max_elems // max(1, B * Hq * N))
    kept = torch.zeros(len(indexes), Hq, dtype=torch.float64, device=q.device)
    tot = torch.zeros(Hq, dtype=torch.float64, device=q.device)
    allm = torch.zeros(Hq, dtype=torch.float64, device=q.device)
    cols = torch.arange(N, device=q.device)
    for r0 in range(r_start, r_stop, chunk):
        r1 = min(r_stop, r0 + chunk)
        p = attention_probs(q, k, r0, r1, scale)                                # (B,Hq,R,N)
        allm += p.sum((0, 2, 3)).double()
        zone = (cols[None, :] >= sink) & (cols[None, :] <= torch.arange(r0, r1, device=q.device)[:, None] - far)
        pf = p * zone                                                            # (B,Hq,R,N) far mass only
        del p
        tot += pf.sum((0, 2, 3)).double()
        cs = torch.nn.functional.pad(torch.cumsum(pf, -1, dtype=torch.float64), (1, 0))
        for i, index in enumerate(indexes):
            rec = _recall_chunk(pf, cs, index, r0, r1)                          # dense heads: 1.0 per row
            dh = index.dense_heads.to(q.device)
            if bool(dh.any()):
                rec[:, dh] = pf[:, dh].sum(-1).double()
            kept[i] += rec.sum((0, 2))
        del pf, cs
    recall = torch.where(tot > 0, kept / tot.clamp_min(1e-30), torch.ones_like(kept))
    return recall.cpu(), (tot / allm.clamp_min(1e-30)).cpu()
