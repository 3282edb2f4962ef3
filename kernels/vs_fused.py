"""Fused vertical-slash estimation and a host-sync-free index conversion (Triton).

The reference (`index.vertical_slash_scores` + `index.vertical_slash_index`) materialises the fp32
softmax of the last 64 queries against every key (1 GiB per layer at 128K on the 8B shape), sums its
columns and diagonals with torch ops, and sizes its outputs with `.item()` calls (a host sync each).
Here, for all heads of a layer at once:

1. `_vs_stats`, grid (B*Hkv*chunks, SPLIT): a program takes GH query heads of one GQA group (the whole
   group, rounded up to a power of two with padding heads masked, while GH*LQ <= ROWS_MAX rows) as the
   M dimension of one MMA: each K block is read once per kv head per pass, not once per query head.
   It runs an online softmax (max, sum) of those rows over a strided share of the key blocks ->
   per-split partial statistics.  SPLIT comes from the SM count (WAVES programs per SM) and N (at
   least MIN_KB_PER_SPLIT key blocks per split), a runtime argument (no recompile).
2. `_vs_sums`, same grid: combines the partials (in split order: deterministic) into each row's exact
   max and sum, recomputes the scores block by block, normalises them and writes
   * the column sums of the block per head (one store per key and head: no overlap, no atomics),
   * its diagonal sums: the (LQ, BN) probability tile is skewed, row i shifted by LQ-1-i, so that a
     column sum of the skewed tile is a diagonal sum (a register `tl.gather`, or with SKEW_GATHER=False
     a per-program scratch slot, L1/L2-resident, written and read back skewed).  A key block touches LQ+BN-1
     diagonals; neighbouring blocks share LQ-1 of them, so each block stores its 2*BN partial sums and
     `_diag_combine` adds the two halves that meet: at most two addends per diagonal, hence deterministic.
   No (LQ, N) slab exists at any time.
   With a head map (`HMAP`) it stores only the heads it is asked for, as compact rows.
3. `_vs_lists`, grid (rows, 2) (build_index's path, `VSRows`): per row, the top-v columns and the
   top-s diagonals (the forced first keys / nearest diagonals on top, as `index._force_keeps` does),
   each by a radix select over the scores' sort keys (four 8-bit passes find the k-th largest, a fifth
   keeps those above it and the first of its ties in position order): ascending position lists with
   no torch.topk, sort or budget mask; the diagonals are read straight from `_vs_sums`' partials (no
   `_diag_combine` launch).  The same program then runs step 4 on its diagonal list.  The public
   `vertical_slash_sums` keeps `_diag_combine`, and `index` applies forced keys and torch.topk there
   (the search's path).
4. `_tiles` (in `_vs_lists`, or `_slash_tiles` for given lists), one program per (batch, head): the
   merge of slash key ranges into BLOCK_N tiles, the same fixpoint as `index._merge_slash_ranges`
   (segments merged until their tiled extents are disjoint), iterated on the device in a data-dependent
   while loop instead of a host-checked one; then the compact segment list, each tile slot's segment by
   binary search, and the per-head coverage bitmap of relative offsets (zeroed in the kernel).
5. `_block_lists`, grid (rows, M): per query block its run of the tile list and its causal vertical
   count (binary searches), its tiles and its gathered columns (causal prefix of the sorted verticals
   minus those inside a tile, from the coverage bitmap, compacted with a cumsum), written zero-padded
   straight into the layer index's rows of those heads (`index.LayerPlan`: no copy into it).

build_index's path is thus 4 launches per layer (was 7 Triton launches + ~20 torch ops: forced-key
copies, two topk, budget masks, casts, sorts, memsets) and one workspace allocation.  This module
imports nothing of ours: `index` imports it (lazily).

Every output shape comes from (N, budgets, block sizes) alone: `block_offset` has
min(tiles bound, cdiv(N, BN) + 2) slots and `column_index` v slots; entries past the counts are 0.
No `.item()`, no host-checked loop: the whole estimation + conversion can be captured in a CUDA graph.
All length-derived ints are `do_not_specialize` (one binary for every prompt length); the only
constexprs are block sizes, LQ, head_dim, SELECT_CHUNK and next_pow2(s) (a budget, bucketed for short
prompts).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["vertical_slash_sums", "vertical_slash_index_fused", "fused_supported"]

_BIG = 1 << 30
_NEG = tl.constexpr(-(1 << 30))   # "minus infinity" for int32 scans inside the kernels
_BIG_I = tl.constexpr(1 << 30)    # tile-list padding (= _BIG), sorts after every real tile
ROWS_MAX = 256          # query rows per scores program: the GQA group's heads x LQ rows share one K read
                        # and one (ROWS, BN) MMA; capped so the (ROWS, 2BN) skew fits registers (a GPU
                        # tuning knob: 64 = one head per program, the pre-issue-12 layout)
WAVES = 2               # scores programs per SM the split count aims at
MIN_KB_PER_SPLIT = 4    # never split a head's keys finer than this many key blocks per program
SCORES_STAGES = 2       # software-pipelining depth of the scores kernels' K loads (shared memory grows
                        # with it; 2 keeps two 256-row programs' worth within an SM on D=64)
SCORES_WARPS = None     # warps per scores program (None: 4 for one head's 64 rows, 8 above)
PROFILE = None          # a callable(step name) called between the steps of this module's host functions
                        # (scripts/gpu_sparse_speed.py records CUDA events there); None in normal use
SKEW_HALVES = True      # skew the (rows, 2*BN) diagonal tile as two (rows, BN) halves: the full-width
                        # version needs > 255 registers per thread (spills; cuobjdump via
                        # scripts/compile_sm90.py); identical sums either way
SELECT_CHUNK = 4096     # scores per iteration of `_vs_lists`' selection passes (5 passes over each row, one
                        # program per row and side): wide, so a 32K row is 8 iterations of 16 independent
                        # loads per thread (a GPU tuning knob; compile_sm90.py: no spills up to S_PAD 8192)
SKEW_GATHER = True      # diagonal skew by register gather (False: explicit scratch + barriers); a GPU
                        # tuning knob, both give identical sums (scripts/gpu_sparse_speed.py times both)


def _mark(step: str) -> None:
    if PROFILE is not None:
        PROFILE(step)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def fused_supported(q, last_q: int, block_m: int, block_n: int) -> bool:
    """Shapes the fused path handles: power-of-two head_dim >= 16, last_q <= 128, and query blocks a
    multiple of key blocks (then the fused slash merge provably equals the reference's)."""
    D = q.shape[-1]
    return (D in (16, 32, 64, 128, 256) and 1 <= last_q <= 128 and block_m % block_n == 0
            and block_m >= block_n)


def _group_heads(G: int, LQ: int) -> int:
    """Query heads per scores program: the whole GQA group (rounded up to a power of two, padding
    heads masked) while G*LQ rows fit ROWS_MAX; else the largest power-of-two share of it."""
    return max(1, min(_next_pow2(G), ROWS_MAX // LQ))


def _splits(device, groups: int, n_kb: int) -> int:
    """Key-range splits per program group: WAVES programs per SM over the layer, but no split gets
    fewer than MIN_KB_PER_SPLIT key blocks (short prompts: few programs rather than idle ones)."""
    device = torch.device(device)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = triton.cdiv(WAVES * sms, groups)
        return max(1, min(want, triton.cdiv(n_kb, MIN_KB_PER_SPLIT)))
    return 2  # CPU interpreter: exercise the split combine (and an empty split for tiny N)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


# ------------------------------------------------------------------------------------------------
# 1-2. estimation
# ------------------------------------------------------------------------------------------------
@triton.jit
def _group_rows(Q, sqb, sqh, sqn, N, lq, Hq, G, NCH, LQ: tl.constexpr, GH: tl.constexpr,
                HEAD_D: tl.constexpr):
    """Rows of one scores program: GH query heads of kv head `kvh` (chunk `ch` of its GQA group) x
    the last LQ positions -> (q (GH*LQ, D), head of each row, row valid, query position, b, kvh)."""
    pid = tl.program_id(0)
    Hkv = Hq // G
    b = pid // (Hkv * NCH)
    kvh = (pid // NCH) % Hkv
    ch = pid % NCH
    r = tl.arange(0, GH * LQ)
    g = ch * GH + r // LQ                              # head inside the GQA group
    i = r % LQ
    pos = N - LQ + i                                   # query position of row slot i
    row_ok = (pos >= N - lq) & (g < G)
    h = kvh * G + tl.minimum(g, G - 1)
    d = tl.arange(0, HEAD_D)
    q = tl.load(Q + b.to(tl.int64) * sqb + h[:, None].to(tl.int64) * sqh + pos[:, None].to(tl.int64) * sqn
                + d[None, :], mask=row_ok[:, None], other=0.0)                 # (GH*LQ, D)
    return q, h, row_ok, g < G, pos, b.to(tl.int64), kvh.to(tl.int64)


@triton.jit(do_not_specialize=["N", "lq", "n_kb", "n_split"])
def _vs_stats(Q, K, MS, LS, sqb, sqh, sqn, skb, skh, skn, N, lq, Hq, G, NCH, n_kb, n_split, qk_scale,
              LQ: tl.constexpr, GH: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
              PREC: tl.constexpr):
    sp = tl.program_id(1)
    q, h, row_ok, head_ok, pos, b, kvh = _group_rows(Q, sqb, sqh, sqn, N, lq, Hq, G, NCH, LQ, GH, HEAD_D)
    d = tl.arange(0, HEAD_D)
    k_base = K + b * skb + kvh * skh
    m_i = tl.full([GH * LQ], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GH * LQ], dtype=tl.float32)
    for kb in range(sp, n_kb, n_split):
        offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * skn + d[None, :],
                    mask=offs_n[:, None] < N, other=0.0)                        # (BN, D): once per group
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale            # (GH*LQ, BN) log2 units
        s = tl.where((offs_n[None, :] <= pos[:, None]) & row_ok[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_safe) + tl.sum(tl.math.exp2(s - m_safe[:, None]), 1)
        m_i = m_new
    # (B*Hq, n_split, LQ) partials, one slot per (query head, split, row): no overlap
    out = ((b * Hq + h) * n_split + sp) * LQ + pos - (N - LQ)
    tl.store(MS + out, m_i, mask=head_ok)   # padding heads of a rounded-up group write nothing
    tl.store(LS + out, l_i, mask=head_ok)


@triton.jit(do_not_specialize=["N", "lq", "n_kb", "n_split", "HR"])
def _vs_sums(Q, K, MS, LS, COL, DP, SCR, HMAP, sqb, sqh, sqn, skb, skh, skn, N, lq, Hq, G, NCH, n_kb, n_split,
             HR, qk_scale, LQ: tl.constexpr, GH: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
             PREC: tl.constexpr, SKEW_GATHER: tl.constexpr = True, SKEW_HALVES: tl.constexpr = False,
             SPLIT_CHUNK: tl.constexpr = 8):
    pid = tl.program_id(0)
    sp = tl.program_id(1)
    q, h, row_ok, head_ok, pos, b, kvh = _group_rows(Q, sqb, sqh, sqn, N, lq, Hq, G, NCH, LQ, GH, HEAD_D)
    ROWS: tl.constexpr = GH * LQ
    d = tl.arange(0, HEAD_D)
    k_base = K + b * skb + kvh * skh
    i = tl.arange(0, ROWS) % LQ
    # exact row statistics from the split partials, in split order (deterministic): max, then sum
    st = ((b * Hq + h) * n_split) * LQ + i
    m = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    sc = tl.arange(0, SPLIT_CHUNK)
    for s0 in range(0, n_split, SPLIT_CHUNK):   # (SPLIT_CHUNK, ROWS) partials per load, not one row
        s_ok = (s0 + sc < n_split)[:, None]
        m = tl.maximum(m, tl.max(tl.load(MS + st[None, :] + (s0 + sc)[:, None] * LQ, mask=s_ok,
                                         other=float("-inf")), 0))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.zeros([ROWS], dtype=tl.float32)
    for s0 in range(0, n_split, SPLIT_CHUNK):
        s_ok = (s0 + sc < n_split)[:, None]
        ms_ = tl.load(MS + st[None, :] + (s0 + sc)[:, None] * LQ, mask=s_ok, other=float("-inf"))
        ls_ = tl.load(LS + st[None, :] + (s0 + sc)[:, None] * LQ, mask=s_ok, other=0.0)
        l += tl.sum(ls_ * tl.math.exp2(ms_ - m_safe[None, :]), 0)
    inv_l = tl.where(l > 0.0, 1.0 / tl.where(l > 0.0, l, 1.0), 0.0)   # empty rows: 0, no 1/0
    c = tl.arange(0, BLOCK_N)
    v = tl.arange(0, 2 * BLOCK_N)
    gh = tl.arange(0, GH)
    h_g = kvh * G + tl.minimum((pid % NCH) * GH + gh, G - 1)                    # (GH,)
    # output row of each head: HMAP[h] (-1: a head of another pattern, nothing stored), HR rows per batch
    j_g = tl.load(HMAP + h_g)
    g_ok = ((pid % NCH) * GH + gh < G) & (j_g >= 0)                             # (GH,) real, kept heads
    row_head = b * HR + j_g                                                     # (GH,) output rows
    scr = SCR + (pid * n_split + sp).to(tl.int64) * (ROWS * BLOCK_N)
    # skewed read: diagonal slot v of row i is column c = v - (LQ-1-i) of the tile
    cc = v[None, :] - (LQ - 1 - i[:, None])                                     # (ROWS, 2BN)
    skew_ok = (cc >= 0) & (cc < BLOCK_N)
    rr = tl.arange(0, ROWS)
    for kb in range(sp, n_kb, n_split):
        offs_n = kb * BLOCK_N + c
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * skn + d[None, :],
                    mask=offs_n[:, None] < N, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        ok = (offs_n[None, :] <= pos[:, None]) & row_ok[:, None]
        p = tl.where(ok, tl.math.exp2(s - m_safe[:, None]) * inv_l[:, None], 0.0)  # (ROWS, BN)
        colsum = tl.sum(tl.reshape(p, (GH, LQ, BLOCK_N)), 1)                      # (GH, BN) per head
        tl.store(COL + row_head[:, None] * N + offs_n[None, :], colsum,
                 mask=g_ok[:, None] & (offs_n[None, :] < N))
        if SKEW_HALVES:   # the (ROWS, 2BN) skewed tile as two (ROWS, BN) halves: half the live registers
            if not SKEW_GATHER:
                tl.store(scr + rr[:, None] * BLOCK_N + c[None, :], p)
                tl.debug_barrier()   # the tile written by all threads ...
            for half in tl.static_range(2):
                ch_ = c[None, :] + half * BLOCK_N - (LQ - 1 - i[:, None])               # (ROWS, BN)
                h_ok = (ch_ >= 0) & (ch_ < BLOCK_N)
                if SKEW_GATHER:
                    sk = tl.where(h_ok, tl.gather(p, tl.minimum(tl.maximum(ch_, 0), BLOCK_N - 1), 1), 0.0)
                else:
                    sk = tl.load(scr + rr[:, None] * BLOCK_N + ch_, mask=h_ok, other=0.0, cache_modifier=".cg")
                dsum = tl.sum(tl.reshape(sk, (GH, LQ, BLOCK_N)), 1)                    # (GH, BN)
                tl.store(DP + (row_head[:, None] * n_kb + kb) * (2 * BLOCK_N) + half * BLOCK_N + c[None, :],
                         dsum, mask=g_ok[:, None])
            if not SKEW_GATHER:
                tl.debug_barrier()   # ... read back by all threads before the next block overwrites it
        else:
            if SKEW_GATHER:   # register gather (the compiler stages it through shared memory)
                sk = tl.where(skew_ok, tl.gather(p, tl.minimum(tl.maximum(cc, 0), BLOCK_N - 1), 1), 0.0)
            else:             # explicit scratch slot: store, barrier, skewed load, barrier
                tl.store(scr + rr[:, None] * BLOCK_N + c[None, :], p)
                tl.debug_barrier()   # the tile written by all threads ...
                sk = tl.load(scr + rr[:, None] * BLOCK_N + cc, mask=skew_ok, other=0.0, cache_modifier=".cg")
                tl.debug_barrier()   # ... read back by all threads before the next block overwrites it
            dsum = tl.sum(tl.reshape(sk, (GH, LQ, 2 * BLOCK_N)), 1)                  # (GH, 2BN)
            tl.store(DP + (row_head[:, None] * n_kb + kb) * (2 * BLOCK_N) + v[None, :], dsum,
                     mask=g_ok[:, None])


@triton.jit
def _diag_at(DP, r, dd, ok, N, n_kb, BLOCK_N: tl.constexpr):
    """diag[d] of row r for the offsets `dd` from the block partials: diagonal e = N-1-d is slot e % BN
    of block e // BN (lower half) plus slot BN + e % BN of the block before (upper half): two addends,
    in a fixed order (deterministic; `_diag_combine` and the selection read it through here)."""
    e = N - 1 - dd
    kb = e // BLOCK_N
    v = e % BLOCK_N
    lo = tl.load(DP + (r * n_kb + kb) * (2 * BLOCK_N) + v, mask=ok, other=0.0)
    hi = tl.load(DP + (r * n_kb + kb - 1) * (2 * BLOCK_N) + BLOCK_N + v, mask=ok & (kb > 0), other=0.0)
    return lo + hi


@triton.jit(do_not_specialize=["N", "n_kb"])
def _diag_combine(DP, DIAG, N, n_kb, BLOCK_N: tl.constexpr, P: tl.constexpr):
    """diag (R, N) from the block partials (the public `vertical_slash_sums`; `build_index` reads the
    partials in `_vs_lists` instead, one launch less)."""
    r = tl.program_id(0).to(tl.int64)
    dd = tl.program_id(1) * P + tl.arange(0, P)
    ok = dd < N
    tl.store(DIAG + r * N + dd, _diag_at(DP, r, dd, ok, N, n_kb, BLOCK_N), mask=ok)


class ScoresPlan:
    """Launch numbers of the two scores kernels for one (B, Hq, Hkv, N, D, last_q) on one device."""

    def __init__(self, B, Hq, Hkv, N, D, last_q, device):
        self.B, self.Hq, self.N, self.D = B, Hq, N, D
        self.G = Hq // Hkv
        self.lq = min(last_q, N)
        self.LQ = max(16, _next_pow2(last_q))   # a budget, not a length: one binary for every N
        self.BN = max(64, self.LQ)              # a block's diagonals fit 2*BN slots
        self.GH = _group_heads(self.G, self.LQ)
        self.NCH = triton.cdiv(self.G, self.GH)  # programs per kv head (1 unless the group exceeds ROWS_MAX)
        self.n_prog = B * Hkv * self.NCH
        self.n_kb = triton.cdiv(N, self.BN)
        self.n_split = _splits(device, self.n_prog, self.n_kb)

    def sizes(self, rows: int) -> dict:
        """fp32 words of each scratch buffer for `rows` output rows (B * heads kept)."""
        scr = 1 if SKEW_GATHER else self.n_prog * self.n_split * self.GH * self.LQ * self.BN
        stats = self.B * self.Hq * self.n_split * self.LQ
        return dict(ms=stats, ls=stats, col=rows * self.N, dp=rows * self.n_kb * 2 * self.BN, scr=scr)

    def launch(self, q, k, scale, ms, ls, col, dp, scr, hmap, rows_per_batch: int):
        """_vs_stats + _vs_sums: col (rows, N) column sums and dp (rows, n_kb, 2BN) diagonal partials of
        the heads `hmap` keeps (hmap[h] = output row within the batch, -1 = not stored)."""
        prec = "ieee" if q.dtype == torch.float32 else "tf32"   # fp32 inputs: no tf32 rounding of logits
        args = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                self.N, self.lq, self.Hq, self.G, self.NCH, self.n_kb, self.n_split)
        qk_scale = scale * 1.4426950408889634
        meta = dict(LQ=self.LQ, GH=self.GH, BLOCK_N=self.BN, HEAD_D=self.D, PREC=prec,
                    num_warps=SCORES_WARPS or (4 if self.GH * self.LQ <= 64 else 8), num_stages=SCORES_STAGES)
        grid = (self.n_prog, self.n_split)
        _vs_stats[grid](q, k, ms, ls, *args, qk_scale, **meta)
        _mark("scores_stats")
        _vs_sums[grid](q, k, ms, ls, col, dp, scr, hmap, *args, rows_per_batch, qk_scale, SKEW_GATHER=SKEW_GATHER,
                       SKEW_HALVES=SKEW_HALVES, SPLIT_CHUNK=8, **meta)
        _mark("scores_sums")


_CONSTS: dict = {}


def _const_i32(values: tuple, device) -> torch.Tensor:
    """A small int32 tensor on `device`, made once per (values, device): no host->device copy per call."""
    key = (values, str(device))
    t = _CONSTS.get(key)
    if t is None:
        if len(_CONSTS) > 4096:
            _CONSTS.clear()
        t = _CONSTS[key] = torch.tensor(values, dtype=torch.int32, device=device)
    return t


def _q(x):   # q and k need unit stride along head_dim only
    return x if x.stride(-1) == 1 else x.contiguous()


def vertical_slash_sums(q, k, last_q: int = 64, scale: float | None = None):
    """Column and diagonal sums of the last `last_q` queries' causal softmax, from three Triton launches
    without the fp32 slab: -> (col (B,Hq,N), diag (B,Hq,N)), diag[..., d] for offset d = q_pos - k_pos.
    (`index.vertical_slash_scores_fused` adds the forced keys, as the reference does.)"""
    q, k = _q(q), _q(k)
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    sp = ScoresPlan(B, Hq, k.shape[1], N, D, last_q, q.device)
    dev = q.device
    sz = sp.sizes(B * Hq)
    ms = torch.empty(sz["ms"], dtype=torch.float32, device=dev)
    ls = torch.empty_like(ms)
    col = torch.empty(B, Hq, N, dtype=torch.float32, device=dev)
    dp = torch.empty(sz["dp"], dtype=torch.float32, device=dev)
    scr = torch.empty(sz["scr"], dtype=torch.float32, device=dev)
    _mark("scores_setup")
    sp.launch(q, k, scale, ms, ls, col, dp, scr, _const_i32(tuple(range(Hq)), dev), Hq)
    diag = torch.empty(B, Hq, N, dtype=torch.float32, device=dev)
    _diag_combine[(B * Hq, triton.cdiv(N, 1024))](dp, diag, N, sp.n_kb, BLOCK_N=sp.BN, P=1024, num_warps=4)
    _mark("scores_diag")
    return col, diag


# ------------------------------------------------------------------------------------------------
# 3. selection (build_index's path): per-head top-k without torch.topk
# ------------------------------------------------------------------------------------------------
@triton.jit
def _sort_key(x):
    """fp32 -> uint32 whose unsigned order is the float order (negative floats bit-flipped)."""
    u = x.to(tl.uint32, bitcast=True)
    return tl.where((u >> 31) == 1, ~u, u | 0x80000000)


@triton.jit
def _vs_key(COL, DP, r, idx, ok, SIDE: tl.constexpr, N, n_kb, NK, lq, BN_EST: tl.constexpr):
    """Sort keys of row r's scores at positions idx: column sums (SIDE 0) or diagonal sums (SIDE 1),
    the first NK positions forced to 2*lq + NK - i (above any real sum, nearest first), as
    `index._force_keeps` writes them."""
    if SIDE == 0:
        x = tl.load(COL + r * N + idx, mask=ok, other=0.0)
    else:
        x = _diag_at(DP, r, idx, ok, N, n_kb, BN_EST)
    x = tl.where(idx < NK, (2 * lq + NK - idx).to(tl.float32), x)
    return _sort_key(x)


@triton.jit
def _select_sorted(COL, DP, OUT, r, k, W, pad, SIDE: tl.constexpr, N, n_kb, NK, lq, BN_EST: tl.constexpr,
                   CHUNK: tl.constexpr):
    """OUT[0:k] = the positions of row r's k highest scores, ascending; OUT[k:W] = pad.

    The same set as a descending torch.topk cut at k (up to which of exactly tied scores is taken:
    here the first in position order).  Radix select over the scores' sort keys, four passes of 8-bit
    digits from the top, finds the k-th largest key T and how many of its ties to take; a last pass
    keeps the keys above T and those ties, in position order, so no sort is needed."""
    ar = tl.arange(0, CHUNK)
    bins = tl.arange(0, 256)
    kr = k                                   # how many are still to take at / below the prefix
    prefix = (k * 0).to(tl.uint32)
    for p in tl.static_range(4):
        hist = tl.zeros([256], dtype=tl.int32)
        for c0 in range(0, N, CHUNK):
            idx = c0 + ar
            ok = idx < N
            u = _vs_key(COL, DP, r, idx, ok, SIDE, N, n_kb, NK, lq, BN_EST)
            if p > 0:
                ok = ok & ((u >> (32 - 8 * p)) == prefix)
            hist += tl.histogram(((u >> (24 - 8 * p)) & 255).to(tl.int32), 256, mask=ok)
        ge = tl.cumsum(hist, 0, reverse=True)             # keys with this digit or a higher one
        b = tl.max(tl.where(ge >= kr, bins, 0), 0)        # the digit of the kr-th largest
        kr -= tl.sum(tl.where(bins > b, hist, 0), 0)      # those above it are all taken
        prefix = (prefix << 8) | b.to(tl.uint32)
    cnt = k * 0
    ties = k * 0
    for c0 in range(0, N, CHUNK):
        idx = c0 + ar
        ok = idx < N
        u = _vs_key(COL, DP, r, idx, ok, SIDE, N, n_kb, NK, lq, BN_EST)
        eq = ok & (u == prefix)
        keep = (ok & (u > prefix)) | (eq & (ties + tl.cumsum(eq.to(tl.int32), 0) <= kr))
        pos = cnt + tl.cumsum(keep.to(tl.int32), 0) - 1
        tl.store(OUT + pos, idx, mask=keep)
        cnt += tl.sum(keep.to(tl.int32), 0)
        ties += tl.sum(eq.to(tl.int32), 0)
    for c0 in range(0, W, CHUNK):
        j = c0 + ar
        tl.store(OUT + j, tl.full([CHUNK], 0, tl.int32) + pad, mask=(j >= k) & (j < W))


# ------------------------------------------------------------------------------------------------
# 4-6. index conversion
# ------------------------------------------------------------------------------------------------
@triton.jit
def _count_le(PTR, n_valid, x, step0):
    """Entries <= x in the ascending PTR[0:n_valid] (x scalar or a vector of lanes): binary lifting,
    step0 = the largest power of two <= n_valid (>= 1); padding past n_valid is never read."""
    pos = tl.zeros_like(x)
    step = step0
    while step > 0:
        nxt = pos + step
        ok = nxt <= n_valid
        # .cg: L2, not L1 (in _tiles the list was written by this program before a barrier)
        val = tl.load(PTR + tl.where(ok, nxt - 1, 0), mask=ok, other=0, cache_modifier=".cg")
        pos = tl.where(ok & (val <= x), nxt, pos)
        step = step // 2
    return pos


@triton.jit
def _tiles(D, nS, r, REL, TOTAL, SEGA, SEGX, COVER, T_MAX, n, span, BLOCK_M: tl.constexpr,
           BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, P: tl.constexpr, CB: tl.constexpr):
    """Row r's slash tiles from its nS >= 1 diagonal offsets D[0:nS] (ascending): the merged tile
    list REL[r] (relative to the query block start, padded with _BIG), its length TOTAL[r], and the
    coverage bitmap COVER[r] of relative offsets [-n, BM+BN) (zeroed here first: no memset launch)."""
    zb = tl.arange(0, 1024)
    for z0 in range(0, span, 1024):
        tl.store(COVER + r * span + z0 + zb, tl.zeros([1024], dtype=tl.uint8), mask=z0 + zb < span)
    i = tl.arange(0, S_PAD)
    # relative starts a = -d ascending = D reversed; slots past nS repeat the last start (they merge)
    a_last = -tl.load(D, cache_modifier=".cg")
    a = tl.where(i < nS, -tl.load(D + (nS - 1 - i), mask=i < nS, other=0, cache_modifier=".cg"), a_last)
    e = a + BLOCK_M
    nxt = tl.minimum(i + 1, S_PAD - 1)
    prv = tl.maximum(i - 1, 0)
    start = tl.full([S_PAD], 1, dtype=tl.int32)            # every interval its own segment
    changed = tl.sum(start, 0)                              # (a tensor: the loop carries its type)
    # The fixpoint stays: merging by a segment's start-dependent tiled extent is not monotone in the
    # start (rounding up on another grid phase), so one left-to-right max-scan can split what the
    # reference's rounds merged; it converges in a few rounds (2-3 on banded slashes).
    while changed > 0:
        seg_a = tl.associative_scan(tl.where(start > 0, a, _NEG), 0, _max_combine)
        last = (tl.gather(start, nxt, 0) > 0) | (i == S_PAD - 1)
        tiled = tl.where(last, seg_a + tl.cdiv(e - seg_a, BLOCK_N) * BLOCK_N, _NEG)
        run = tl.associative_scan(tiled, 0, _max_combine)
        before = tl.where(i == 0, _NEG, tl.gather(run, prv, 0))
        new = tl.where((start > 0) & (a >= before), 1, 0)
        changed = tl.sum(start - new)
        start = new
    seg_a = tl.associative_scan(tl.where(start > 0, a, _NEG), 0, _max_combine)
    last = (tl.gather(start, nxt, 0) > 0) | (i == S_PAD - 1)
    nt = tl.where(last, tl.cdiv(e - seg_a, BLOCK_N), 0)
    excl = tl.cumsum(nt, 0) - nt
    total = tl.sum(nt, 0)
    nseg = tl.sum(last.to(tl.int32), 0)
    tl.store(TOTAL + r, total)
    # compact segment list (start, first tile slot), then every tile slot finds its segment by binary
    # search: a fixed cost of log2(S_PAD) loads, not one masked S_PAD-wide pass per tile of the
    # longest segment (~100 passes on a 6K-diagonal band)
    k = tl.cumsum(last.to(tl.int32), 0) - 1
    tl.store(SEGA + r * S_PAD + k, seg_a, mask=last)
    tl.store(SEGX + r * S_PAD + k, excl, mask=last)
    tl.debug_barrier()          # the segment list (and the zeroed bitmap) written by all threads
    p_ = tl.arange(0, P)
    cb = tl.arange(0, CB)
    step0 = 1
    while step0 * 2 <= nseg:
        step0 *= 2
    for p0 in range(0, T_MAX, P):
        p = p0 + p_
        ks = _count_le(SEGX + r * S_PAD, nseg, p, step0) - 1             # (P,) segment of slot p
        ks = tl.maximum(ks, 0)
        sa = tl.load(SEGA + r * S_PAD + ks, cache_modifier=".cg")
        sx = tl.load(SEGX + r * S_PAD + ks, cache_modifier=".cg")
        rel = sa + (p - sx) * BLOCK_N
        ok = p < total
        tl.store(REL + r * T_MAX + p, tl.where(ok, rel, _BIG_I), mask=p < T_MAX)
        # coverage bitmap of relative offsets [-n, BM+BN) (index rel + n), as the reference builds it
        for c0 in tl.static_range(0, BLOCK_N, CB):
            ci = rel[:, None] + n + c0 + cb[None, :]
            tl.store(COVER + r * span + ci, tl.full([P, CB], 1, dtype=tl.uint8),
                     mask=(ok & (p < T_MAX))[:, None] & (ci >= 0) & (ci < span))


@triton.jit(do_not_specialize=["S", "T_MAX", "n", "span"])
def _slash_tiles(D, REL, TOTAL, SEGA, SEGX, COVER, S, T_MAX, n, span, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, S_PAD: tl.constexpr, P: tl.constexpr, CB: tl.constexpr):
    """`_tiles` of every row of D (R, S), sorted diagonal offsets (the public conversion)."""
    r = tl.program_id(0).to(tl.int64)
    _tiles(D + r * S, S, r, REL, TOTAL, SEGA, SEGX, COVER, T_MAX, n, span, BLOCK_M, BLOCK_N, S_PAD, P, CB)


@triton.jit(do_not_specialize=["N", "n_kb", "R", "V", "S", "T_MAX", "span", "lq", "NKC", "NKD"])
def _vs_lists(COL, DP, BUD, VL, SL, REL, TOTAL, SEGA, SEGX, COVER, N, n_kb, R, V, S, T_MAX, span, lq, NKC, NKD,
              BN_EST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, S_PAD: tl.constexpr,
              P: tl.constexpr, CB: tl.constexpr, CHUNK: tl.constexpr):
    """Grid (R, 2).  Program (r, 0): row r's top-BUD[0, r] columns, ascending, into VL[r] (padded
    with N: past every causal row).  Program (r, 1): its top-BUD[1, r] diagonals into SL[r], then
    their tiles (`_tiles`).  Replaces torch.topk x2, the budget masks, two sorts and a memset."""
    r = tl.program_id(0).to(tl.int64)
    side = tl.program_id(1)
    k = tl.load(BUD + side * R + r)
    if side == 0:
        _select_sorted(COL, DP, VL + r * V, r, k, V, N, 0, N, n_kb, NKC, lq, BN_EST, CHUNK)
    else:
        _select_sorted(COL, DP, SL + r * S, r, k, S, 0, 1, N, n_kb, NKD, lq, BN_EST, CHUNK)
        tl.debug_barrier()      # the list written by all threads, read back by all
        _tiles(SL + r * S, k, r, REL, TOTAL, SEGA, SEGX, COVER, T_MAX, N, span, BLOCK_M, BLOCK_N, S_PAD, P, CB)


@triton.jit(do_not_specialize=["n", "T_MAX", "V", "M", "MB", "MC", "span", "HR", "Hq", "t_step0", "v_step0"])
def _block_lists(REL, COLS, COVER, HEADS, BC, BO, CC, CI, n, T_MAX, V, M, MB, MC, span, HR, Hq, t_step0, v_step0,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CH: tl.constexpr):
    """Grid (R, M).  Query block m of row r: its run of the row's tile list (tiles not entirely before
    key 0 or after the block's last row) and its gathered columns (the causal prefix of the sorted
    verticals minus those inside a tile, from the coverage bitmap, compacted with a cumsum), both
    found by binary search here; written, zero-padded to the widths MB / MC, to row b*Hq + HEADS[j]
    (r = b*HR + j) of the layer's index, so a mixed layer needs no copy into it."""
    r = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1)
    r0 = m * BLOCK_M
    r1 = tl.minimum(r0 + BLOCK_M, n)
    om = ((r // HR) * Hq + tl.load(HEADS + r % HR)) * M + m
    first = _count_le(REL + r * T_MAX, T_MAX, -(r0 + BLOCK_N), t_step0)
    cnt = _count_le(REL + r * T_MAX, T_MAX, r1 - 1 - r0, t_step0) - first
    j = tl.arange(0, CH)
    for j0 in range(0, MB, CH):
        ok = j0 + j < cnt
        off = tl.load(REL + r * T_MAX + first + j0 + j, mask=ok, other=0) + r0
        tl.store(BO + om * MB + j0 + j, tl.where(ok, off, 0), mask=j0 + j < MB)
    tl.store(BC + om, cnt)
    ncaus = _count_le(COLS + r * V, V, r1 - 1, v_step0)   # sorted verticals <= the block's last row
    kept = tl.sum(tl.zeros([CH], dtype=tl.int32), 0)
    for c0 in range(0, ncaus, CH):
        ok = c0 + j < ncaus
        col = tl.load(COLS + r * V + c0 + j, mask=ok, other=0)
        rel = tl.minimum(tl.maximum(col - r0 + n, 0), span - 1)
        cov = tl.load(COVER + r * span + rel, mask=ok, other=1)
        keep = ok & (cov == 0)
        pos = kept + tl.cumsum(keep.to(tl.int32), 0) - 1
        tl.store(CI + om * MC + pos, col, mask=keep & (pos < MC))
        kept += tl.sum(keep.to(tl.int32), 0)
    for c0 in range(0, MC, CH):
        tl.store(CI + om * MC + c0 + j, tl.zeros([CH], dtype=tl.int32), mask=(c0 + j >= kept) & (c0 + j < MC))
    tl.store(CC + om, kept)


def _conversion_sizes(n: int, S: int, block_m: int, block_n: int):
    """(T_MAX tile-list slots, S_PAD, MB block slots, coverage span) from the length and the widest
    slash budget alone."""
    # tiles are disjoint inside the relative key range [-(n-1), block_m + block_n)
    T_MAX = max(1, min(triton.cdiv(n + block_m, block_n) + 1, S * (block_m // block_n + 1)))
    MB = max(1, min(T_MAX, triton.cdiv(n, block_n) + 2))
    return T_MAX, max(16, _next_pow2(S)), MB, n + block_m + block_n


def _step0(x: int) -> int:   # the largest power of two <= x (x >= 1)
    return 1 << (x.bit_length() - 1)


def vertical_slash_index_fused(vertical: torch.Tensor, slash: torch.Tensor, n: int,
                               block_m: int = 64, block_n: int = 64):
    """Same contract and kept keys as `index.vertical_slash_index` (block_m a multiple of block_n),
    without a host sync: output widths depend only on n, the budgets and the block sizes.  Inputs in
    any order with any padding (the search's path); `build_index` selects, sorts and converts in
    `VSRows.write` instead."""
    if block_m % block_n:
        raise ValueError("the fused conversion needs block_m a multiple of block_n")
    B, H, S = slash.shape
    dev = slash.device
    R = B * H
    d = slash.reshape(R, S)
    # padding -> diagonal 0; int32 (a cheaper sort); ascending: the kernel reads it reversed and negated
    _mark("convert_start")
    d = d.masked_fill((d < 0) | (d >= n), 0).to(torch.int32).sort(-1).values
    T_MAX, S_PAD, MB, span = _conversion_sizes(n, S, block_m, block_n)
    M = triton.cdiv(n, block_m)
    rel = torch.empty(R, T_MAX, dtype=torch.int32, device=dev)
    total = torch.empty(R, dtype=torch.int32, device=dev)
    seg = torch.empty(2, R, S_PAD, dtype=torch.int32, device=dev)    # per-head segment starts / slots
    cover = torch.empty(R, span, dtype=torch.uint8, device=dev)      # zeroed by the kernel
    _mark("convert_sort_slash")
    _slash_tiles[(R,)](d, rel, total, seg[0], seg[1], cover, S, T_MAX, n, span, BLOCK_M=block_m,
                       BLOCK_N=block_n, S_PAD=S_PAD, P=256, CB=min(32, block_n),
                       num_warps=4 if S <= 1024 else 8)
    _mark("convert_slash_tiles")
    V = vertical.shape[-1]
    if V:
        c = vertical.reshape(R, V)
        cols = c.masked_fill((c < 0) | (c >= n), n).to(torch.int32).sort(-1).values   # padding last
    else:
        cols = torch.full((R, 1), n, dtype=torch.int32, device=dev)
    Vw, MC = cols.shape[1], max(1, V)
    _mark("convert_sort_vertical")
    count, ccount = (torch.empty(R, M, dtype=torch.int32, device=dev) for _ in range(2))
    off = torch.empty(R, M, MB, dtype=torch.int32, device=dev)
    cidx = torch.empty(R, M, MC, dtype=torch.int32, device=dev)
    _block_lists[(R, M)](rel, cols, cover, _const_i32(tuple(range(R)), dev), count, off, ccount, cidx,
                         n, T_MAX, Vw, M, MB, MC, span, R, R, _step0(T_MAX), _step0(Vw),
                         BLOCK_M=block_m, BLOCK_N=block_n, CH=128, num_warps=4)
    _mark("convert_block_lists")
    return (count.view(B, H, M), off.view(B, H, M, MB), ccount.view(B, H, M), cidx.view(B, H, M, MC))


# ------------------------------------------------------------------------------------------------
# build_index's path: a layer's vertical-slash heads written straight into its index
# ------------------------------------------------------------------------------------------------
class _Ptr:
    """A device address Triton can launch with (it calls data_ptr() and reads dtype, like its own
    TensorWrapper); `ws` owns the memory and outlives the launches that use it (same stream)."""

    __slots__ = ("_p", "dtype")

    def __init__(self, p: int, dtype):
        self._p, self.dtype = p, dtype

    def data_ptr(self) -> int:
        return self._p


_ALIGN = 16   # workspace buffers start on 64-byte boundaries: Triton specialises pointers on 16-byte
              # alignment, so an unaligned carve would compile another binary for some lengths


class VSRows:
    """What one layer's vertical-slash heads need besides q and k, from (B, Hq, Hkv, N, D, heads,
    budgets, last_q, blocks, device) alone: made once (`index` caches it with the layer's layout) so a
    call allocates one workspace and makes five launches — scores x2, `_vs_lists`, `_block_lists` —
    with no host->device copy, no topk/sort/memset and no copy into the layer's index.

    sizes[j] = (v, s) of head heads[j]; rows are r = b*len(heads) + j; keep = the forced first columns
    and nearest diagonals (`index.VERTICAL_KEEP`, `SLASH_KEEP`)."""

    def __init__(self, B, Hq, Hkv, N, D, heads, sizes, last_q, block_m, block_n, device, keep=(30, 100)):
        self.heads, self.N, self.block_m, self.block_n = tuple(heads), N, block_m, block_n
        self.B, self.Hq, self.HR = B, Hq, len(heads)
        self.R = R = B * self.HR
        self.sp = ScoresPlan(B, Hq, Hkv, N, D, last_q, device)
        budgets = [(min(v, N), min(max(s, 1), N)) for v, s in sizes]
        self.V = max(1, max(v for v, _ in budgets))        # list widths (padding: N / unused)
        self.S = max(s for _, s in budgets)
        self.MC = self.V
        self.T_MAX, self.S_PAD, self.MB, self.span = _conversion_sizes(N, self.S, block_m, block_n)
        self.M = triton.cdiv(N, block_m)
        hmap = [-1] * Hq
        for j, h in enumerate(self.heads):
            hmap[h] = j
        self.hmap = _const_i32(tuple(hmap), device)
        self.heads_t = _const_i32(self.heads, device)
        # (2, R): row r's column budget, then its diagonal budget (rows repeat the heads per batch)
        self.bud = _const_i32(tuple(v for v, _ in budgets) * B + tuple(s for _, s in budgets) * B, device)
        words = dict(self.sp.sizes(R))
        words.update(vl=R * self.V, sl=R * self.S, rel=R * self.T_MAX, total=R, sega=R * self.S_PAD,
                     segx=R * self.S_PAD, cover=triton.cdiv(R * self.span, 4))
        self.layout, o = {}, 0             # name -> (word offset, words, dtype) in the one workspace
        for name, w in words.items():
            dt = torch.float32 if name in ("ms", "ls", "col", "dp", "scr") else \
                torch.uint8 if name == "cover" else torch.int32
            self.layout[name] = (o, w, dt)
            o += triton.cdiv(w, _ALIGN) * _ALIGN
        self.words = o
        self.nkc, self.nkd = min(keep[0], N), min(keep[1], N)   # forced keys: index.VERTICAL_KEEP, SLASH_KEEP

    def widths(self) -> tuple[int, int]:
        """(block slots, column slots) its rows need in the layer's index."""
        return self.MB, self.MC

    def write(self, q, k, scale: float, bc, bo, cc, ci) -> None:
        """Estimate, select and convert; write rows b*Hq + heads[j] of bc (B,Hq,M), bo (B,Hq,M,MB),
        cc (B,Hq,M), ci (B,Hq,M,MC) in full (MB >= self.MB, MC >= self.MC; zero padding)."""
        q, k = _q(q), _q(k)
        ws = torch.empty(self.words, dtype=torch.int32, device=q.device)
        if ws.is_cuda:   # raw pointers into the workspace: a dozen tensor views would cost ~30 us of host time
            base = ws.data_ptr()
            buf = {name: _Ptr(base + 4 * o, dt) for name, (o, w, dt) in self.layout.items()}
        else:            # the interpreter reads real tensors
            buf = {name: ws[o:o + w].view(dt) for name, (o, w, dt) in self.layout.items()}
        cover = buf["cover"]
        _mark("scores_setup")
        sp = self.sp
        sp.launch(q, k, scale, buf["ms"], buf["ls"], buf["col"], buf["dp"], buf["scr"], self.hmap, self.HR)
        N, bm, bn = self.N, self.block_m, self.block_n
        _vs_lists[(self.R, 2)](buf["col"], buf["dp"], self.bud, buf["vl"], buf["sl"], buf["rel"], buf["total"],
                               buf["sega"], buf["segx"], cover, N, sp.n_kb, self.R, self.V, self.S, self.T_MAX,
                               self.span, sp.lq, self.nkc, self.nkd, BN_EST=sp.BN, BLOCK_M=bm, BLOCK_N=bn,
                               S_PAD=self.S_PAD, P=256, CB=min(32, bn), CHUNK=SELECT_CHUNK,
                               num_warps=8 if self.S_PAD <= 8192 else 16)
        _mark("convert_lists")
        MB, MC = bo.shape[-1], ci.shape[-1]
        _block_lists[(self.R, self.M)](buf["rel"], buf["vl"], cover, self.heads_t, bc, bo, cc, ci, N, self.T_MAX,
                                       self.V, self.M, MB, MC, self.span, self.HR, self.Hq, _step0(self.T_MAX),
                                       _step0(self.V), BLOCK_M=bm, BLOCK_N=bn, CH=128, num_warps=4)
        _mark("convert_block_lists")
