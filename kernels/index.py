"""Sparse index: which keys each (batch, query head, query block) attends to.

One format serves every pattern, so ONE kernel launch can run a whole layer whose heads mix
A-shape, vertical-slash and block-sparse (MInference launches one kernel per head):

* ``block_count  (B, Hq, M)        int32``  kept key blocks of query block m
* ``block_offset (B, Hq, M, MAX_B) int32``  first key of each kept block; a block covers keys
  ``[off, off + block_n)``.  Offsets need NOT be multiples of ``block_n`` (vertical-slash ranges
  start anywhere, which is what makes an isolated diagonal cost one block instead of two) and may be
  negative (keys < 0 are masked).  Blocks of one query block never overlap.
* ``column_count (B, Hq, M)        int32``  single kept key columns not inside a kept block
* ``column_index (B, Hq, M, MAX_C) int32``  those columns, ascending
* ``dense_heads  (Hq,)             bool``   heads computed by dense causal attention (their counts are 0)

Causality is applied on top of the index: a query row never sees a later key, so "kept keys of row r"
= (union of its query block's blocks and columns) ∩ [0, r].  Block rounding means a pattern keeps a
superset of its textbook key set (e.g. A-shape windows are rounded out to whole blocks); `kept_mask`
returns exactly what the kernels compute, and `kernel_cost` the FLOPs they execute.

This module knows the index format and the builders only; which pattern uses which builder, its
sizes, cost and scaling live in the pattern registry (`patterns.py`), whose `build_index` calls these.

All builders are vectorised torch (no per-head Python loops over long data, no N×N tensors), so they run
on the GPU inside the timed prefill and on the CPU in tests.

On the GPU (`LayerPlan`, used by `patterns.build_index` where the fused estimation runs) a layer's
index is instead written in place: everything that depends only on (patterns, shape, blocks, device) is
made once, the index is one uninitialised buffer, vertical-slash heads write their rows in their own
kernels (`vs_fused.VSRows`) and one launch fills every other row (`index_fill`): per layer no tensor
from host data, no index_put, clone or memset, and 5-6 Triton launches + block-sparse's few torch ops
(was ~20-50 torch ops + 7 Triton launches; tests/test_index_launch_budget.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


VERTICAL_KEEP = 30   # vertical-slash always keeps the first keys (attention sinks) ...
SLASH_KEEP = 100     # ... and the nearest diagonals (local context), as MInference does
_BIG = 1 << 30       # sentinel larger than any key position


@dataclass
class SparseIndex:
    block_count: torch.Tensor   # (B, Hq, M) int32
    block_offset: torch.Tensor  # (B, Hq, M, MAX_B) int32
    column_count: torch.Tensor  # (B, Hq, M) int32
    column_index: torch.Tensor  # (B, Hq, M, MAX_C) int32
    n: int                      # sequence length the index was built for
    block_m: int = 64
    block_n: int = 64
    dense_heads: torch.Tensor | None = None  # (Hq,) bool on the CPU; None = no dense heads
    # the dense heads' numbers as a Python tuple, known on the host when the index is built from
    # patterns: the kernels pick those heads without reading a tensor back (a host sync per layer)
    dense_head_ids: tuple = field(init=False, repr=False, compare=False)

    @property
    def shape(self):
        return tuple(self.block_count.shape)  # (B, Hq, M)

    @property
    def num_q_blocks(self) -> int:
        return self.block_count.shape[-1]

    def to(self, device) -> "SparseIndex":
        f = lambda t: t.to(device)
        flags = [h in self.dense_head_ids for h in range(self.block_count.shape[1])]
        return SparseIndex(f(self.block_count), f(self.block_offset), f(self.column_count),
                           f(self.column_index), self.n, self.block_m, self.block_n, flags)

    def density(self) -> float:
        """Computed key work / causal dense work (block padding included)."""
        B, H, _ = self.shape
        full = B * H * _dense_cost_blocks(self.n, self.block_m, self.block_n)
        return kernel_cost(self, self.n, 1) / (4 * self.block_m * self.block_n * full)


def _set_dense_heads(self, dh):
    """`dense_heads` may be None, a (Hq,) bool tensor (read once here: a CPU tensor, no sync) or a list
    of bools from the patterns (no tensor at all).  The flags are kept as a tuple and the CPU tensor
    is made only when someone reads `dense_heads`: building an index creates no tensor from host data."""
    if dh is None:
        flags = (False,) * self.block_count.shape[1]
    elif isinstance(dh, torch.Tensor):
        flags = tuple(bool(f) for f in dh.to("cpu", torch.bool).tolist())
    else:
        flags = tuple(bool(f) for f in dh)
    self.__dict__["_dense_flags"] = flags
    self.__dict__["_dense_mask"] = None
    self.dense_head_ids = tuple(h for h, f in enumerate(flags) if f)


def _get_dense_heads(self) -> torch.Tensor:
    t = self.__dict__["_dense_mask"]
    if t is None:   # its own tensor (callers may edit an index's mask)
        t = self.__dict__["_dense_mask"] = _cpu_flags(self._dense_flags)
    return t


# after @dataclass: its __init__ assigns the field through the property (default None)
SparseIndex.dense_heads = property(_get_dense_heads, _set_dense_heads,
                                   doc="(Hq,) bool on the CPU: heads computed by dense attention")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _q_block_bounds(n: int, block_m: int, device):
    m = torch.arange(triton_cdiv(n, block_m), device=device, dtype=torch.int64)
    r0 = m * block_m
    r1 = torch.clamp(r0 + block_m, max=n)  # exclusive; the last block may be ragged
    return r0, r1


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _cpu_flags(flags: tuple) -> torch.Tensor:
    """(Hq,) CPU bool tensor of `flags`, a fresh copy (callers may edit an index's mask)."""
    return torch.tensor(flags, dtype=torch.bool) if flags else torch.zeros(0, dtype=torch.bool)


def _empty_index_parts(B, H, M, device):
    z = torch.zeros(B, H, M, dtype=torch.int32, device=device)
    return z, torch.zeros(B, H, M, 1, dtype=torch.int32, device=device), z.clone(), \
        torch.zeros(B, H, M, 1, dtype=torch.int32, device=device)


# --------------------------------------------------------------------------------------------
# A-shape (stream_llm)
# --------------------------------------------------------------------------------------------
def a_shape_index(n: int, sink: int, window: int, block_m: int = 64, block_n: int = 64, device="cpu"):
    """Blocks for sink + local window, identical for every head: -> count (M,), offset (M, MAX_B).

    Query block [r0, r1) keeps key blocks [0, ceil(sink/block_n)) and every key block that holds a key of
    some row's window [r - window + 1, r]; block rounding widens both by < block_n keys.
    """
    r0, r1 = _q_block_bounds(n, block_m, device)
    lo = torch.clamp(r0 - window + 1, min=0) // block_n       # first local key block
    hi = (r1 - 1) // block_n                                  # last (diagonal) key block
    ns = torch.clamp(torch.minimum(torch.full_like(lo, triton_cdiv(sink, block_n)), lo), min=0)
    count = ns + hi - lo + 1
    mx = a_shape_width(n, sink, window, block_m, block_n)
    j = torch.arange(mx, device=device)[None, :]
    blk = torch.where(j < ns[:, None], j, lo[:, None] + j - ns[:, None])
    blk = torch.where(j < count[:, None], blk, torch.zeros_like(blk))
    return count.to(torch.int32), (blk * block_n).to(torch.int32)


def a_shape_width(n: int, sink: int, window: int, block_m: int, block_n: int) -> int:
    """Block slots of an A-shape row from (n, sink, window, blocks) alone, no device sync: sink blocks +
    the window's blocks (floor(a/bn) - floor(b/bn) <= floor((a-b)/bn) + 1), never more than there are
    key blocks."""
    return max(1, min(triton_cdiv(sink, block_n) + (block_m + window - 2) // block_n + 2, triton_cdiv(n, block_n)))


# --------------------------------------------------------------------------------------------
# vertical-slash
# --------------------------------------------------------------------------------------------
def _gqa_last_scores(q, k, last_q: int, scale: float):
    """softmax(q[-last_q:] kᵀ) with causality, fp32, GQA without repeat_kv: -> (B, Hq, last_q, N).

    On GPU the product runs in the input dtype (fp32 accumulation inside cuBLAS, logits rounded to
    bf16/fp16: ample for ranking), the softmax in fp32; on CPU everything is fp32."""
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    lq = min(last_q, N)
    mm_dtype = q.dtype if q.is_cuda else torch.float32
    qt = (q[:, :, N - lq:].to(mm_dtype) * scale).reshape(B, Hkv, G * lq, D)       # (B, Hkv, G*lq, D)
    out = torch.empty(B, Hq, lq, N, dtype=torch.float32, device=q.device)
    rows = torch.arange(N - lq, N, device=q.device)
    future = torch.arange(N - lq, N, device=q.device)[None, :] > rows[:, None]      # (lq, lq) tail
    # chunk over kv heads so the fp32 score slab stays ~<= 1 GiB even at 256K+
    per = max(1, (1 << 28) // max(1, G * lq * N))
    if per >= Hkv:  # one chunk: return the softmax buffer itself (saves a GB-sized copy at 128K)
        s = torch.matmul(qt, k.to(mm_dtype).transpose(-1, -2)).view(B, Hkv, G, lq, N)
        s[..., N - lq:].masked_fill_(future, float("-inf"))
        return torch.softmax(s, dim=-1, dtype=torch.float32).view(B, Hq, lq, N)
    for h0 in range(0, Hkv, per):
        h1 = min(Hkv, h0 + per)
        s = torch.matmul(qt[:, h0:h1], k[:, h0:h1].to(mm_dtype).transpose(-1, -2))
        s = s.view(B, h1 - h0, G, lq, N)
        s[..., N - lq:].masked_fill_(future, float("-inf"))   # only the last lq keys can be future
        out[:, h0 * G:h1 * G] = torch.softmax(s, dim=-1, dtype=torch.float32).view(B, (h1 - h0) * G, lq, N)
    return out


def _diagonal_sums(p: torch.Tensor) -> torch.Tensor:
    """p (R, lq, N): row i is query position N-lq+i.  -> (R, N) sums along diagonals d = q_pos - k_pos.

    With e = N-1-d, diagonal e takes p[i, e-(lq-1)+i]: in the flat row-major buffer that is offset
    i*(N+1) + e-(lq-1), so for e >= lq-1 a strided view (stride N+1 over rows) lines every diagonal up
    in one column — no padded copy.  The lq-1 farthest diagonals (e < lq-1) are a tiny triangle."""
    R, lq, N = p.shape
    p = p.contiguous()
    out = torch.zeros(R, N, dtype=p.dtype, device=p.device)
    if N >= lq:
        view = p.as_strided((R, lq, N - lq + 1), (lq * N, N + 1, 1), p.storage_offset())
        out[:, lq - 1:] = view.sum(1)
    e = torch.arange(min(lq - 1, N), device=p.device)
    if e.numel():
        i = torch.arange(lq, device=p.device)
        kk = e[:, None] - (lq - 1) + i[None, :]                                      # (lq-1, lq)
        ok = (kk >= 0) & (kk < N)
        g = p[:, i[None, :].expand_as(kk), kk.clamp(min=0, max=N - 1)]
        out[:, :e.numel()] = (g * ok).sum(-1)
    return out.flip(-1)                                                               # index d


def vertical_slash_scores(q, k, last_q: int = 64, scale: float | None = None):
    """Column and diagonal scores of the last `last_q` queries' softmax, forced keys on top.

    -> (col (B,Hq,N), diag (B,Hq,N)); diag[..., d] scores diagonal offset d = q_pos - k_pos. The first
    VERTICAL_KEEP columns and SLASH_KEEP diagonals get scores above any real one (a sum is <= lq), in
    their own order, so every top-k keeps them.
    """
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    p = _gqa_last_scores(q, k, last_q, scale)                                  # (B, Hq, lq, N)
    lq = p.shape[2]
    col = p.sum(2)                                                              # (B, Hq, N)
    diag = _diagonal_sums(p.view(B * Hq, lq, N)).view(B, Hq, N)               # strided view sums
    del p
    return _force_keeps(col, diag, lq)


def _force_keeps(col, diag, lq: int):
    """Scores above any real one (a sum is <= lq) for the first VERTICAL_KEEP columns and the
    SLASH_KEEP nearest diagonals, in their own order (nearest first, so s < SLASH_KEEP still keeps
    the main diagonal)."""
    N = col.shape[-1]
    nk = min(VERTICAL_KEEP, N)
    col[..., :nk] = _forced_scores(nk, lq, col.dtype, col.device)
    nk = min(SLASH_KEEP, N)
    diag[..., :nk] = _forced_scores(nk, lq, diag.dtype, diag.device)
    return col, diag


def _forced_scores(nk: int, lq: int, dtype, device) -> torch.Tensor:
    """(nk,) the forced keys' scores 2·lq+nk-i, made once per (nk, lq, dtype, device)."""
    key = ("forced", nk, lq, dtype, str(device))
    t = _CONST_CACHE.get(key)
    if t is None:
        if len(_CONST_CACHE) > 4096:
            _CONST_CACHE.clear()
        t = _CONST_CACHE[key] = (2 * lq + nk) - torch.arange(nk, device=device, dtype=dtype)
    return t


def vertical_slash_scores_fused(q, k, last_q: int = 64, scale: float | None = None):
    """`vertical_slash_scores` from the fused Triton kernels (`vs_fused`): same scores up to fp32
    rounding, no (last_q, N) slab, no host sync."""
    from .vs_fused import vertical_slash_sums
    col, diag = vertical_slash_sums(q, k, last_q, scale)
    return _force_keeps(col, diag, min(last_q, q.shape[2]))


def _top_sorted(scores: torch.Tensor, k: int, sort: bool = True) -> torch.Tensor:
    """Indices of the top-k scores along the last axis, ascending (B, H, k); `sort=False`: in topk's
    own order (the fused conversion sorts its inputs anyway: one sort launch less per side)."""
    if k <= 0:
        return torch.zeros(*scores.shape[:-1], 0, dtype=torch.int64, device=scores.device)
    top = torch.topk(scores, k, dim=-1, sorted=False).indices
    return top.sort(-1).values if sort else top


def _top_budgeted(scores: torch.Tensor, budgets: list[int], kmax: int) -> torch.Tensor:
    """(B, H, kmax) int64: head h's top budgets[h] indices (descending score), then -1 padding."""
    if kmax <= 0:
        return torch.zeros(*scores.shape[:-1], 0, dtype=torch.int64, device=scores.device)
    top = torch.topk(scores, kmax, dim=-1, sorted=True).indices
    return top.masked_fill(_budget_mask(tuple(budgets), kmax, scores.device), -1)


def _budget_mask(budgets: tuple, kmax: int, device) -> torch.Tensor:
    """(H, kmax) bool, True past each head's budget; made once per (budgets, device)."""
    key = ("budget_mask", budgets, kmax, str(device))
    t = _CONST_CACHE.get(key)
    if t is None:
        if len(_CONST_CACHE) > 4096:
            _CONST_CACHE.clear()
        b = torch.as_tensor(budgets, dtype=torch.int64)
        t = _CONST_CACHE[key] = (torch.arange(kmax)[None, :] >= b[:, None]).to(device)
    return t


def estimate_vertical_slash(q, k, v: int, s: int, last_q: int = 64, scale: float | None = None):
    """Online vertical-slash estimation (MInference): from the last `last_q` queries' softmax,
    column sums pick the top-`v` key columns (the first VERTICAL_KEEP keys always kept) and diagonal
    sums pick the top-`s` diagonal offsets d = q_pos - k_pos (the SLASH_KEEP nearest always kept).

    q (B,Hq,N,D), k (B,Hkv,N,D).  Returns (vertical (B,Hq,v') int64 ascending key positions,
    slash (B,Hq,s') int64 ascending diagonal offsets), v' = min(v, N), s' = min(s, N).
    """
    N = q.shape[2]
    col, diag = vertical_slash_scores(q, k, last_q, scale)
    return _top_sorted(col, min(v, N)), _top_sorted(diag, min(max(s, 1), N))


def _merge_slash_ranges(d: torch.Tensor, block_m: int, block_n: int):
    """Slash offsets (R, S) int64 -> tile starts relative to the query block start, (R, T) ascending,
    padded with _BIG, plus per-row tile counts.

    Diagonal d in query block [r0, r0+block_m) touches keys [r0-d, r0-d+block_m): the same interval
    for every block once written relative to r0, so the merge is done once per head, not per block.
    Intervals are merged until their block_n-tiled extents are disjoint (merging never adds tiles).
    """
    R, S = d.shape
    a = -d.flip(-1)                                   # starts ascending (d descending)
    e = a + block_m
    dev = d.device
    prev = None
    while True:
        tiled = a + (torch.div(e - a + block_n - 1, block_n, rounding_mode="floor")) * block_n
        run = torch.cummax(tiled, dim=-1).values
        new = torch.ones_like(a, dtype=torch.bool)
        new[:, 1:] = a[:, 1:] >= run[:, :-1]
        seg = torch.cumsum(new.to(torch.int64), -1) - 1
        nseg = seg[:, -1] + 1
        a2 = torch.full_like(a, _BIG).scatter_reduce(1, seg, a, "amin", include_self=True)
        e2 = torch.full_like(e, -_BIG).scatter_reduce(1, seg, e, "amax", include_self=True)
        # pad past nseg with copies of the last segment (duplicates merge away harmlessly)
        j = torch.arange(S, device=dev)[None, :]
        last = (nseg - 1)[:, None]
        a = torch.where(j < nseg[:, None], a2, a2.gather(1, last))
        e = torch.where(j < nseg[:, None], e2, e2.gather(1, last))
        if prev is not None and torch.equal(prev, nseg):
            break
        prev = nseg
    valid = torch.arange(S, device=dev)[None, :] < nseg[:, None]
    ntile = torch.where(valid, torch.div(e - a + block_n - 1, block_n, rounding_mode="floor"),
                        torch.zeros_like(a))
    incl = torch.cumsum(ntile, -1)
    total = incl[:, -1]
    T = max(int(total.max().item()), 1)
    p = torch.arange(T, device=dev)[None, :].expand(R, T).contiguous()
    sid = torch.searchsorted(incl, p, right=True).clamp(max=S - 1)
    excl = incl - ntile
    rel = a.gather(1, sid) + (p - excl.gather(1, sid)) * block_n
    rel = torch.where(p < total[:, None], rel, torch.full_like(rel, _BIG))
    return rel, total


def vertical_slash_index(vertical: torch.Tensor, slash: torch.Tensor, n: int,
                         block_m: int = 64, block_n: int = 64):
    """(B,H,V) ascending columns + (B,H,S) ascending diagonal offsets -> (count, offset, ccount, cindex).

    Entries < 0 (or >= n) in either input are treated as padding.  Slashes become contiguous key
    ranges starting anywhere (one block per isolated diagonal, merged when they touch); verticals
    become single gathered columns minus those already inside a kept block.
    """
    B, H, S = slash.shape
    dev = slash.device
    R = B * H
    d = slash.reshape(R, S).to(torch.int64)
    bad = (d < 0) | (d >= n)
    d = torch.where(bad, torch.zeros_like(d), d)      # padding -> duplicate of diagonal 0
    d = d.sort(-1).values
    rel, total = _merge_slash_ranges(d, block_m, block_n)   # (R, T)
    r0, r1 = _q_block_bounds(n, block_m, dev)
    M = r0.numel()
    # tiles of block m: start + block_n > -r0 (touches key >= 0) and start <= r1-1-r0 (causal)
    lo_key = (-(r0 + block_n))[None, :].expand(R, M).contiguous()
    hi_key = (r1 - 1 - r0)[None, :].expand(R, M).contiguous()
    first = torch.searchsorted(rel, lo_key, right=True)
    last = torch.searchsorted(rel, hi_key, right=True)
    count = (last - first)                                      # (R, M)
    MB = max(int(count.max().item()), 1)
    jj = torch.arange(MB, device=dev)[None, None, :]
    idx = (first[:, :, None] + jj).clamp(max=rel.shape[1] - 1)
    off = rel.gather(1, idx.view(R, -1)).view(R, M, MB) + r0[None, :, None]
    off = torch.where(jj < count[:, :, None], off, torch.zeros_like(off))

    # columns: a column c is covered for block m iff relative offset c - r0 lies in a tile.  The tiles
    # are the same for every m in relative coordinates, so one bitmap per head over relative offsets
    # [-n, block_m + block_n) answers all (m, c) with one gather.
    V = vertical.shape[-1]
    if V == 0:
        ccount = torch.zeros(R, M, dtype=torch.int32, device=dev)
        cidx = torch.zeros(R, M, 1, dtype=torch.int32, device=dev)
    else:
        c = vertical.reshape(R, V).to(torch.int64)
        c = torch.where((c < 0) | (c >= n), torch.full_like(c, _BIG), c).sort(-1).values
        # Fast path (the usual shape): every head's tiles form ONE contiguous run [a, e) relative to
        # r0 that reaches past the block's last row (it holds diagonal 0).  Then the kept columns of
        # block m are exactly the sorted columns < r0 + a: a prefix of one list, so no per-(m, c) work.
        nt = total
        a_h = rel[:, 0]
        contiguous = bool(((rel[:, 1:] - rel[:, :-1] == block_n) | (rel[:, 1:] >= _BIG)).all()) \
            and bool((a_h + nt * block_n >= block_m).all())
        if contiguous:
            ccount = torch.searchsorted(c, (r0[None, :] + a_h[:, None]).contiguous(), right=False)  # (R, M)
            MC = max(int(ccount.max().item()), 1)
            c32 = torch.nn.functional.pad(c, (0, max(0, MC - V)), value=0)[:, :MC].clamp(max=n).to(torch.int32)
            cidx = c32[:, None, :].expand(R, M, MC).contiguous()
            return (count.view(B, H, M).to(torch.int32), off.view(B, H, M, MB).to(torch.int32),
                    ccount.view(B, H, M).to(torch.int32), cidx.view(B, H, M, MC))
        span = n + block_m + block_n
        ok_t = rel < _BIG
        diff = torch.zeros(R, span + 1, dtype=torch.int32, device=dev)
        lo = torch.where(ok_t, (rel + n).clamp(0, span), span)
        hi = torch.where(ok_t, (rel + n + block_n).clamp(0, span), span)
        diff.scatter_add_(1, lo, torch.ones_like(lo, dtype=torch.int32))
        diff.scatter_add_(1, hi, -torch.ones_like(hi, dtype=torch.int32))
        cover = torch.cumsum(diff, 1)[:, :span] > 0                                   # (R, span)
        # causal: only columns <= r1-1 matter, and they are a prefix of the sorted list
        ncaus = torch.searchsorted(c, (r1 - 1)[None, :].expand(R, M).contiguous(), right=True)  # (R, M)
        MCc = max(int(ncaus.max().item()), 1)
        c = c[:, :MCc]
        if c.shape[1] < MCc:
            c = torch.nn.functional.pad(c, (0, MCc - c.shape[1]), value=_BIG)
        ccount = torch.empty(R, M, dtype=torch.int32, device=dev)
        cidx = torch.empty(R, M, MCc, dtype=torch.int32, device=dev)
        step = max(1, (1 << 26) // max(1, R * MCc))   # bound the (R, Mc, V) temporaries
        c32 = c.clamp(max=n).to(torch.int32)
        jj = torch.arange(MCc, device=dev)
        for m0 in range(0, M, step):
            m1 = min(M, m0 + step)
            relc = (c[:, None, :] - r0[None, m0:m1, None] + n).clamp(0, span - 1)    # (R, Mc, V)
            covered = cover.gather(1, relc.view(R, -1)).view_as(relc)
            keep = (jj[None, None, :] < ncaus[:, m0:m1, None]) & ~covered
            pos = torch.cumsum(keep, -1, dtype=torch.int32) - 1
            ccount[:, m0:m1] = pos[..., -1] + 1
            pos = torch.where(keep, pos, MCc).to(torch.int64)
            buf = torch.zeros(R, m1 - m0, MCc + 1, dtype=torch.int32, device=dev)
            buf.scatter_(-1, pos, c32[:, None, :].expand(R, m1 - m0, MCc))
            cidx[:, m0:m1] = buf[..., :MCc]
        MC = max(int(ccount.max().item()), 1)
        cidx = cidx[..., :MC]
    return (count.view(B, H, M).to(torch.int32), off.view(B, H, M, MB).to(torch.int32),
            ccount.view(B, H, M), cidx.reshape(B, H, M, -1).contiguous())


# --------------------------------------------------------------------------------------------
# block-sparse
# --------------------------------------------------------------------------------------------
def _pool(x, block):  # (B, H, N, D) -> (B, H, ceil(N/block), D) fp32 mean per block (ragged last)
    B, H, N, D = x.shape
    full = N // block
    parts = []
    if full:  # sum in fp32 straight from the bf16/fp16 input: no fp32 copy of q or k
        parts.append(x[:, :, :full * block].reshape(B, H, full, block, D).sum(3, dtype=torch.float32) / block)
    if N % block:
        parts.append(x[:, :, full * block:].sum(2, keepdim=True, dtype=torch.float32) / (N % block))
    return torch.cat(parts, 2) if len(parts) > 1 else parts[0]


def estimate_block_sparse(q, k, topk, block_m: int = 64, block_n: int = 64):
    """Top-k key blocks per query block from mean-pooled Q (block_m) and K (block_n) scores.

    The diagonal key block(s) (those overlapping the query block's rows) are always kept, later key
    blocks never.  `topk` is an int or a per-head list.  -> count (B,Hq,M) int64, key-block ids
    (B,Hq,M,K) int64 ascending (entries past count are 0).
    """
    B, Hq, N, D = q.shape
    tks = tuple([int(topk)] * Hq if isinstance(topk, int) else [int(t) for t in topk])
    K = block_sparse_width(N, tks, block_m, block_n)
    _, _, count, past = _block_sparse_consts(B, N, tks, K, block_m, block_n, q.device)
    sel = block_sparse_topk(q, k, tks, block_m, block_n)
    sel = sel.masked_fill(past, _BIG).sort(-1).values
    sel = sel.masked_fill(past, 0)
    return count.clone(), sel   # a copy: the cached count must not be edited by callers


def block_sparse_width(N: int, tks: tuple, block_m: int, block_n: int) -> int:
    """K, the key-block slots of a selection: the largest top-k, at least the forced (diagonal) blocks
    per query block ((block_m-1)//block_n + 2), at most the key blocks.  From Python ints: no device
    sync sizes the selection."""
    return min(triton_cdiv(N, block_n), max(max(tks), (block_m - 1) // block_n + 2))


def block_sparse_topk(q, k, tks: tuple, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """(B, Hq, M, K) int64 key-block ids in descending score order (forced diagonal blocks first, future
    blocks -inf): the first count[b, h, m] of them are head h's selection (`_block_sparse_consts`)."""
    B, Hq, N, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    K = block_sparse_width(N, tks, block_m, block_n)
    qp = _pool(q, block_m)                                                # (B, Hq, M, D)
    kp = _pool(k, block_n)                                                # (B, Hkv, Nb, D)
    M, Nb = qp.shape[2], kp.shape[2]
    fill_at, fill = _block_sparse_fill(N, block_m, block_n, q.device)
    per = max(1, (1 << 26) // max(1, G * M * Nb))
    if per >= Hkv:   # one slab (the usual case): no chunk copies
        sc = torch.matmul(qp.reshape(B, Hkv, G * M, D), kp.transpose(-1, -2)).view(B, Hq, M, Nb)
        # future blocks -inf, forced (diagonal) blocks +inf, in place: one op (was a negation + two fills)
        return torch.topk(torch.where(fill_at, fill, sc, out=sc), K, dim=-1, sorted=True).indices
    sel = torch.empty(B, Hq, M, K, dtype=torch.int64, device=q.device)
    for h0 in range(0, Hkv, per):  # chunk over kv heads: the (M, Nb) score slab is N²/4096 floats
        h1 = min(Hkv, h0 + per)
        sc = torch.matmul(qp[:, h0 * G:h1 * G].reshape(B, h1 - h0, G * M, D),
                          kp[:, h0:h1].transpose(-1, -2)).view(B, (h1 - h0) * G, M, Nb)
        sel[:, h0 * G:h1 * G] = torch.topk(torch.where(fill_at, fill, sc, out=sc), K, dim=-1, sorted=True).indices
    return sel


def _block_sparse_fill(N, block_m, block_n, device):
    """(M, Nb) where the scores are overridden and with what: -inf on future key blocks, +inf on the
    forced diagonal ones (what masked_fill_(~allowed, -inf).masked_fill_(forced, inf) wrote)."""
    key = ("block_sparse_fill", N, block_m, block_n, str(device))
    t = _CONST_CACHE.get(key)
    if t is None:
        if len(_CONST_CACHE) > 4096:
            _CONST_CACHE.clear()
        allowed, forced = _block_masks(N, block_m, block_n, device)
        fill = torch.full(allowed.shape, float("-inf"), dtype=torch.float32, device=device).masked_fill_(forced, float("inf"))
        t = _CONST_CACHE[key] = (~allowed | forced, fill)
    return t


def _block_masks(N, block_m, block_n, device):
    """allowed (M, Nb): key blocks with a key <= the query block's last row; forced: those among them
    overlapping the query block's rows (the diagonal blocks)."""
    r0, r1 = _q_block_bounds(N, block_m, device)
    kb = torch.arange(triton_cdiv(N, block_n), device=device)
    allowed = (kb[None, :] * block_n) <= (r1 - 1)[:, None]                # (M, Nb)
    forced = allowed & ((kb[None, :] * block_n + block_n - 1) >= r0[:, None])
    return allowed, forced


def _block_sparse_consts(B, N, tks: tuple, K: int, block_m: int, block_n: int, device):
    """What `estimate_block_sparse` needs besides the scores, from (N, top-k budgets, blocks) alone:
    allowed (M, Nb) causal key blocks, forced (M, Nb) diagonal ones, count (B, Hq, M) kept blocks,
    past (B, Hq, M, K) slots beyond the count.  Made once per shape and reused by every layer (about
    15 small launches each)."""
    key = ("block_sparse", B, N, tks, K, block_m, block_n, str(device))
    t = _CONST_CACHE.get(key)
    if t is None:
        if len(_CONST_CACHE) > 4096:
            _CONST_CACHE.clear()
        allowed, forced = _block_masks(N, block_m, block_n, device)
        tk = torch.as_tensor(tks, dtype=torch.int64).to(device)
        count = torch.minimum(tk[None, :, None], allowed.sum(-1)[None, None, :])
        count = torch.maximum(count, forced.sum(-1)[None, None, :]).expand(B, len(tks), allowed.shape[0]).contiguous()
        past = torch.arange(K, device=device) >= count[..., None]
        t = _CONST_CACHE[key] = (allowed, forced, count, past)
    return t


# --------------------------------------------------------------------------------------------
# one index for a whole layer
# --------------------------------------------------------------------------------------------
_CONST_CACHE: dict = {}


def _dev_index(values, device) -> torch.Tensor:
    """A small int64 tensor of head numbers on `device`, made once per (values, device): a fresh
    host->device copy per call would be a sync point and cannot be captured in a CUDA graph."""
    key = (tuple(values), str(device))
    t = _CONST_CACHE.get(key)
    if t is None:
        if len(_CONST_CACHE) > 4096:   # bounded: distinct head sets x devices of one process
            _CONST_CACHE.clear()
        t = _CONST_CACHE[key] = torch.as_tensor(list(values), dtype=torch.int64, device=device)
    return t


def check_qkv(q, k):
    """ValueError unless q (B,Hq,N,D), k (B,Hkv,N,D) are a prefill pair with Hq % Hkv == 0 (GQA)."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (B, H, N, D); got {tuple(q.shape)} and {tuple(k.shape)}")
    B, Hq, N, D = q.shape
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} (prefill needs equal lengths)")
    if Hq % k.shape[1]:
        raise ValueError(f"query heads {Hq} must be a multiple of kv heads {k.shape[1]} (GQA)")


def use_fused(fused, q, last_q, block_m, block_n) -> bool:
    """Fused Triton estimation + sync-free conversion: by default on CUDA, where it is the fast path;
    the CPU keeps the torch reference (the interpreter would be slow), unless asked for (tests)."""
    if fused is None and not q.is_cuda:
        return False
    from . import vs_fused  # Triton: imported only where it runs
    ok = vs_fused.fused_supported(q, last_q, block_m, block_n)
    if fused is None:
        return ok
    if fused and not ok:
        raise ValueError(f"fused vertical-slash estimation needs head_dim in 16..256 (power of two), "
                         f"last_q <= 128 and block_m a multiple of block_n; got D={q.shape[-1]}, "
                         f"last_q={last_q}, blocks {block_m}x{block_n}: pass fused=False")
    if fused and not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("fused=True on CPU needs TRITON_INTERPRET=1 (slow; for tests)")
    return bool(fused)


def top_vertical_slash(col: torch.Tensor, diag: torch.Tensor, sizes: list[tuple[int, int]], sort: bool = True):
    """Per-head top-v columns and top-s diagonals from `vertical_slash_scores` output.

    col, diag (B, H, N); sizes[h] = (v, s) for head h (clamped to N; s >= 1).  -> (vertical (B,H,V),
    slash (B,H,S)) int64 ascending, V / S the largest sizes; heads with smaller budgets are padded
    with -1 (ignored by `vertical_slash_index`).  Equal sizes share one top-k call.  `sort=False`
    leaves each head's entries in top-k order (for `vs_fused.vertical_slash_index_fused`, which sorts).
    """
    B, H, N = col.shape
    dev = col.device
    sizes = [(min(v, N), min(max(s, 1), N)) for v, s in sizes]
    vmax, smax = max(v for v, _ in sizes), max(s for _, s in sizes)
    if all(sz == (vmax, smax) for sz in sizes):
        return _top_sorted(col, vmax, sort), _top_sorted(diag, smax, sort)
    if not sort:
        # Unsorted output (the fused conversion sorts): ONE descending top-k at the largest budget for
        # all heads, then each head's entries past its own budget become -1 padding.  The first v of a
        # descending top-vmax are the top v, so the kept keys equal a per-budget top-k (up to which of
        # exactly tied scores is taken, which top-k leaves open anyway).  Real packs give nearly every
        # head its own (v, s): grouping cost ~6 launches per distinct budget (~90 per layer on Qwen).
        return (_top_budgeted(col, [v for v, _ in sizes], vmax),
                _top_budgeted(diag, [s for _, s in sizes], smax))
    vert = torch.full((B, H, vmax), -1, dtype=torch.int64, device=dev)
    sl = torch.full((B, H, smax), -1, dtype=torch.int64, device=dev)
    for (vv, ss) in set(sizes):  # group equal sizes
        idx = _dev_index([i for i, sz in enumerate(sizes) if sz == (vv, ss)], dev)
        vert[:, idx, :vv] = _top_sorted(col[:, idx], vv, sort)
        sl[:, idx, :ss] = _top_sorted(diag[:, idx], ss, sort)
    return vert, sl


def assemble_index(parts, B: int, Hq: int, n: int, block_m: int, block_n: int, dense_heads,
                   device, *, static_parts=(), static_key=None) -> SparseIndex:
    """One `SparseIndex` from per-head-group parts: each part is (heads, count (B,h,M), offset (B,h,M,*),
    column_count (B,h,M), column_index (B,h,M,*)); both column entries may be None: no gathered
    columns (nothing to write).  Heads in no part (dense heads) keep zero counts;
    `dense_heads` is a (Hq,) bool or list of bools.

    ``static_parts`` (with a hashable ``static_key`` naming them, e.g. the A-shape heads and sizes):
    parts that depend only on the shape.  The zero buffers with those parts written in are made once
    per (key, shape) and cloned per call, so a mixed layer pays 4 copies + the data-dependent parts'
    writes instead of 4 fills + 4 writes per part (~40 launches per layer on the Qwen pack)."""
    M = triton_cdiv(n, block_m)
    allp = list(parts) + list(static_parts)
    if len(allp) == 1 and list(allp[0][0]) == list(range(Hq)):  # one pattern family: no re-assembly copy
        _, c, o, cc, ci = allp[0]
        if cc is None:
            cc, ci = torch.zeros_like(c, dtype=torch.int32), torch.zeros(*c.shape, 1, dtype=torch.int32, device=c.device)
        return SparseIndex(c.to(torch.int32).contiguous(), o.to(torch.int32).contiguous(),
                           cc.to(torch.int32).contiguous(), ci.to(torch.int32).contiguous(),
                           n, block_m, block_n, [bool(f) for f in dense_heads])
    MB = max([p[2].shape[-1] for p in allp] + [1])
    MC = max([p[4].shape[-1] for p in allp if p[4] is not None] + [1])
    if static_key is None:
        bufs = _write_parts(_zero_bufs(B, Hq, M, MB, MC, device), allp, device)
    else:
        key = ("assembled", static_key, B, Hq, M, MB, MC, str(device))
        base = _CONST_CACHE.get(key)
        if base is None:
            if len(_CONST_CACHE) > 4096:
                _CONST_CACHE.clear()
            base = _CONST_CACHE[key] = _write_parts(_zero_bufs(B, Hq, M, MB, MC, device), static_parts, device)
        bufs = _write_parts(tuple(t.clone() for t in base), parts, device)
    return SparseIndex(*bufs, n, block_m, block_n, [bool(f) for f in dense_heads])


# --------------------------------------------------------------------------------------------
# the GPU path: one layer's index written in place, no per-call copies
# --------------------------------------------------------------------------------------------
FILL_ZERO, FILL_A_SHAPE, FILL_SELECTED = 0, 1, 2


class LayerShape(NamedTuple):
    """What a pattern kind's `fast_rows` may depend on."""
    B: int
    Hq: int
    Hkv: int
    N: int
    D: int
    block_m: int
    block_n: int
    last_q: int
    device: object


@dataclass
class FilledRows:
    """Rows of a layer's index that `index_fill._fill_rows` writes (one launch for all of them) from
    per-head parameters, returned by a pattern kind's `fast_rows`: FILL_ZERO (count 0: dense heads),
    FILL_A_SHAPE (params (sink, window): the closed form of `a_shape_index`), FILL_SELECTED (params
    (top-k, 0): the first count of `select(q, k)`'s (B, Hq, M, K) key-block ids, in score order,
    sorted and scaled to key offsets, count as in `_block_sparse_consts`)."""

    mode: int
    heads: tuple
    params: tuple                  # per head (p1, p2)
    widths: tuple                  # (block slots, column slots) its rows need
    select: object = None          # FILL_SELECTED: q, k -> (B, Hq, M, K) int64


class LayerPlan:
    """Everything of one layer's index that depends only on (patterns, B, Hq, Hkv, N, D, blocks,
    last_q, device), made once (`patterns._fast_plan` caches it): the rows each pattern kind fills
    (`Pattern.fast_rows`), the index widths, and the fill kernel's per-head parameters as one small
    device tensor.  `build` then allocates the index as ONE buffer and makes only the launches that
    depend on q and k: each self-writing kind's (vertical-slash: 4) + the selection's (block-sparse:
    pooling, one matmul, one where, one topk) + one fill launch for every other row.  Nothing is
    copied from the host, nothing assembled with index_put, no buffer zeroed separately."""

    def __init__(self, rows: list, B: int, Hq: int, N: int, block_m: int, block_n: int, dense: list, device):
        self.B, self.Hq, self.N, self.block_m, self.block_n = B, Hq, N, block_m, block_n
        self.M = triton_cdiv(N, block_m)
        self.dense = tuple(bool(f) for f in dense)
        self.writers = [r for r in rows if not isinstance(r, FilledRows)]
        filled = [r for r in rows if isinstance(r, FilledRows)]
        sel = [r for r in filled if r.mode == FILL_SELECTED]
        if len(sel) > 1:
            raise ValueError("one selecting pattern kind per layer")
        self.select = sel[0].select if sel else None
        self.K = max([r.widths[0] for r in sel] + [1])
        widths = [r.widths() for r in self.writers] + [r.widths for r in filled]
        self.MB = max([w[0] for w in widths] + [1])
        self.MC = max([w[1] for w in widths] + [1])
        params = tuple(x for r in filled for h, (p1, p2) in zip(r.heads, r.params) for x in (h, r.mode, p1, p2))
        self.HF = len(params) // 4
        self.params = torch.tensor(params or (0, 0, 0, 0), dtype=torch.int32, device=device)
        B, Hq, M = self.B, self.Hq, self.M
        # one int32 buffer: count | offset | column count | column index, each on a 64-byte boundary
        sizes = (B * Hq * M, B * Hq * M * self.MB, B * Hq * M, B * Hq * M * self.MC)
        self.offsets, o = [], 0
        for n in sizes:
            self.offsets.append(o)
            o += triton_cdiv(n, 16) * 16
        self.words = o

    def build(self, q, k, scale: float) -> SparseIndex:
        B, Hq, M, MB, MC = self.B, self.Hq, self.M, self.MB, self.MC
        buf = torch.empty(self.words, dtype=torch.int32, device=q.device)
        o = self.offsets
        bc = buf.as_strided((B, Hq, M), (Hq * M, M, 1), o[0])
        bo = buf.as_strided((B, Hq, M, MB), (Hq * M * MB, M * MB, MB, 1), o[1])
        cc = buf.as_strided((B, Hq, M), (Hq * M, M, 1), o[2])
        ci = buf.as_strided((B, Hq, M, MC), (Hq * M * MC, M * MC, MC, 1), o[3])
        for w in self.writers:
            w.write(q, k, scale, bc, bo, cc, ci)
        if self.HF:
            from .index_fill import fill_rows
            sel = self.select(q, k) if self.select is not None else None
            fill_rows(self, sel, bc, bo, cc, ci)
        return SparseIndex(bc, bo, cc, ci, self.N, self.block_m, self.block_n, self.dense)


def _zero_bufs(B, Hq, M, MB, MC, device):
    return (torch.zeros(B, Hq, M, dtype=torch.int32, device=device),
            torch.zeros(B, Hq, M, MB, dtype=torch.int32, device=device),
            torch.zeros(B, Hq, M, dtype=torch.int32, device=device),
            torch.zeros(B, Hq, M, MC, dtype=torch.int32, device=device))


def _write_parts(bufs, parts, device):
    count, offset, ccount, cindex = bufs
    for hs, c, o, cc, ci in parts:
        hs = list(hs)
        # a run of consecutive heads is a slice (a plain copy); otherwise an index tensor, cached
        hsel = slice(hs[0], hs[-1] + 1) if hs == list(range(hs[0], hs[0] + len(hs))) else _dev_index(hs, device)
        i32 = lambda t: t if t.dtype == torch.int32 else t.to(torch.int32)  # noqa: E731 (index_put: same dtype)
        count[:, hsel] = i32(c)
        offset[:, hsel, :, :o.shape[-1]] = i32(o)
        if cc is not None:   # None: no gathered columns, the buffers' zeros stand
            ccount[:, hsel] = i32(cc)
            cindex[:, hsel, :, :ci.shape[-1]] = i32(ci)
    return bufs


# --------------------------------------------------------------------------------------------
# what was kept, and what it costs
# --------------------------------------------------------------------------------------------
def kept_mask(index: SparseIndex, n: int | None = None, rows: slice | None = None) -> torch.Tensor:
    """Bool (B, Hq, R, N): key j is used for query row r (causality applied).  `rows` selects rows."""
    n = index.n if n is None else n
    B, H, M = index.shape
    dev = index.block_count.device
    r_start, r_stop = (0, n) if rows is None else (rows.start or 0, n if rows.stop is None else rows.stop)
    m0, m1 = r_start // index.block_m, triton_cdiv(r_stop, index.block_m)
    bc, bo = index.block_count[:, :, m0:m1].long(), index.block_offset[:, :, m0:m1].long()
    cc, ci = index.column_count[:, :, m0:m1].long(), index.column_index[:, :, m0:m1].long()
    Mr = m1 - m0
    blk = torch.zeros(B, H, Mr, n + 1, dtype=torch.bool, device=dev)
    keys = bo[..., None] + torch.arange(index.block_n, device=dev)                    # (B,H,Mr,MB,BN)
    ok = (torch.arange(bo.shape[-1], device=dev) < bc[..., None])[..., None] & (keys >= 0) & (keys < n)
    blk.scatter_(-1, torch.where(ok, keys, n).flatten(-2), True)
    okc = (torch.arange(ci.shape[-1], device=dev) < cc[..., None]) & (ci >= 0) & (ci < n)
    blk.scatter_(-1, torch.where(okc, ci, n), True)
    blk = blk[..., :n]
    dh = index.dense_heads.to(dev)
    blk[:, dh] = True
    r = torch.arange(r_start, r_stop, device=dev)
    out = blk[:, :, (r // index.block_m) - m0]                                       # (B,H,R,N)
    return out & (torch.arange(n, device=dev)[None, :] <= r[:, None])


def _dense_cost_blocks(n, block_m, block_n):
    """(query block, key block) tiles a causal block kernel visits: sum_m ceil(r1 / block_n)."""
    M = triton_cdiv(n, block_m)
    return sum(triton_cdiv(min((m + 1) * block_m, n), block_n) for m in range(M))


def kernel_cost(index: SparseIndex, n: int | None = None, d: int = 128) -> int:
    """FLOPs the kernels execute for `index` (QKᵀ and PV, 4·BM·BN·D per tile, padding included:
    full BLOCK_M rows in the ragged last query block, gathered columns rounded up to BLOCK_N).
    Dense heads are costed as a causal block kernel with the same tiles."""
    n = index.n if n is None else n
    bm, bn = index.block_m, index.block_n
    tiles = index.block_count.long().sum() + ((index.column_count.long() + bn - 1) // bn).sum()
    tiles = int(tiles.item())
    B = index.shape[0]
    tiles += B * int(index.dense_heads.sum()) * _dense_cost_blocks(n, bm, bn)
    return 4 * bm * bn * d * tiles


def head_kernel_cost(index: SparseIndex, d: int = 128) -> torch.Tensor:
    """`kernel_cost` split per query head: (Hq,) float64 FLOPs summed over the batch (the search costs
    every head of a candidate index at once with this)."""
    bm, bn = index.block_m, index.block_n
    tiles = index.block_count.long().sum(-1) + ((index.column_count.long() + bn - 1) // bn).sum(-1)  # (B, Hq)
    tiles = tiles.sum(0).double().cpu()
    tiles[index.dense_heads] = float(index.shape[0] * _dense_cost_blocks(index.n, bm, bn))
    return tiles * (4 * bm * bn * d)
