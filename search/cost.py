"""Kernel-aware cost: equal-cost candidate settings, and the per-head FLOPs of a built index.

Design points:
* "Cost" is what `accel.kernels` really executes: 4·BM·BN·D FLOPs per (query block, key block) tile,
  block padding included (`kernels.kernel_cost`).  A budget is a fraction of the *causal dense* cost at
  the searched length, so budgets mean the same thing at 4K and at 1M.
* A-shape and block-sparse costs do not depend on the data: their sizes are solved exactly with the
  kernels' analytic `pattern_cost` (granularity: one tile per query block).  Vertical-slash cost does
  depend on where the chosen diagonals fall; its sizes are solved with the kernels' "expected" predictor
  (slashes forming one band) and the search then measures every head's real cost on the built index
  (`head_costs`) and shrinks heads that overshoot (see `search.py`).
* `head_costs` is `kernel_cost` split per head (same formula; `test_search.py` checks the sum).
"""
from __future__ import annotations

import torch

from ..kernels import HeadPattern, SparseIndex, pattern_cost
from ..kernels.index import triton_cdiv

__all__ = ["dense_cost", "tile_flops", "head_costs", "candidates_for_budget", "minference_budget", "cost_tolerance",
           "A_SHAPE_SINK_BLOCKS", "VS_SLASH_SHARES"]

# A-shape candidates: sink = this many key blocks, the window takes the rest of the budget.
A_SHAPE_SINK_BLOCKS = (1, 2, 4)
# vertical-slash candidates: share of the budget given to slashes (the rest buys vertical columns).
VS_SLASH_SHARES = (0.9, 0.7, 0.5, 0.3)


def tile_flops(d: int, block: int) -> int:
    return 4 * block * block * d


def dense_cost(n: int, d: int, block: int = 64) -> int:
    return pattern_cost(HeadPattern("dense"), n, d, block)


def head_costs(index: SparseIndex, d: int) -> torch.Tensor:
    """Per-head FLOPs (Hq,) float64 that the kernels execute for `index` (summed over the batch)."""
    bm, bn = index.block_m, index.block_n
    tiles = index.block_count.long().sum(-1) + ((index.column_count.long() + bn - 1) // bn).sum(-1)  # (B, Hq)
    tiles = tiles.sum(0).double().cpu()
    dense_tiles = sum(triton_cdiv(min((m + 1) * bm, index.n), bn) for m in range(triton_cdiv(index.n, bm)))
    tiles[index.dense_heads] = float(index.shape[0] * dense_tiles)
    return tiles * (4 * bm * bn * d)


def _solve_monotone(cost_of, target: float, lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with cost_of(x) <= target (cost_of non-decreasing); lo if none."""
    if cost_of(lo) > target:
        return lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost_of(mid) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def cost_tolerance(n: int, d: int, block: int = 64) -> float:
    """Slack when comparing costs: half a tile per query block (sizes move in whole tiles)."""
    return 0.5 * triton_cdiv(n, block) * tile_flops(d, block)


def candidates_for_budget(n: int, d: int, budget: float, block: int = 64) -> list[HeadPattern]:
    """Candidate settings of every pattern whose kernel cost at length n is `budget` × dense: for each,
    the largest sizes whose (analytic) cost does not exceed the budget.

    Returns a de-duplicated list; sizes are in tokens (A-shape, vertical-slash) or blocks (block-sparse).
    Settings that would need more than dense (budget too big for a pattern) are clamped to what the
    pattern can do at n; budget >= 1 returns only ``dense``.
    """
    if budget >= 1.0:
        return [HeadPattern("dense")]
    target = budget * dense_cost(n, d, block)
    nblocks = triton_cdiv(n, block)
    out: list[HeadPattern] = []

    # block-sparse: top-k key blocks per query block
    k = _solve_monotone(lambda x: pattern_cost(HeadPattern("block_sparse", x), n, d, block), target, 1, nblocks)
    out.append(HeadPattern("block_sparse", k, 0))

    # A-shape: sink of a few blocks, window solved for the rest.  A window of w·block keys touches
    # w+1 key blocks per query block (the diagonal one included); w = 0 -> window 1 (diagonal block only)
    win = lambda w: max(1, w * block)
    for sb in A_SHAPE_SINK_BLOCKS:
        sink = sb * block
        if sink >= n:
            continue
        cost_w = lambda w: pattern_cost(HeadPattern("stream_llm", sink, win(w)), n, d, block)
        w = _solve_monotone(cost_w, target, 0, nblocks)
        out.append(HeadPattern("stream_llm", sink, win(w)))

    # vertical-slash: a share of the budget for a band of s diagonals, the rest for v columns
    for share in VS_SLASH_SHARES:
        cost_s = lambda s: pattern_cost(HeadPattern("vertical_and_slash", 0, s), n, d, block)
        s = _solve_monotone(cost_s, share * target, 1, n)
        cost_v = lambda v: pattern_cost(HeadPattern("vertical_and_slash", v, s), n, d, block)
        v = _solve_monotone(cost_v, target, 0, n)
        if v + s > 0:
            out.append(HeadPattern("vertical_and_slash", v, s))

    # below a pattern's minimum cost (e.g. A-shape's sink + diagonal block) a setting cannot reach the
    # budget: keep only settings within one tile per query block of max(target, cheapest setting)
    costs = [pattern_cost(p, n, d, block) for p in out]
    cap = max(target, min(costs)) + cost_tolerance(n, d, block)
    seen, uniq = set(), []
    for p, c in zip(out, costs):
        if c <= cap and (p.name, p.size_1, p.size_2) not in seen:
            seen.add((p.name, p.size_1, p.size_2))
            uniq.append(p)
    return uniq


def minference_budget(n: int, d: int, block: int = 64) -> float:
    """Budget of MInference's default vertical-slash setting (v=1000, s=6096) at length n, as a fraction
    of dense (capped at 1): the `--budget minference` choice."""
    c = pattern_cost(HeadPattern("vertical_and_slash", 1000, 6096), n, d, block)
    return min(1.0, c / dense_cost(n, d, block))
