"""Kernel-aware cost: equal-cost candidate settings, and the per-head FLOPs of a built index.

Design points:
* "Cost" is what `accel.kernels` really executes: 4·BM·BN·D FLOPs per (query block, key block) tile,
  block padding included (`kernels.kernel_cost`).  A budget is a fraction of the *causal dense* cost at
  the searched length, so budgets mean the same thing at 4K and at 1M.
* Every registered pattern gives its own equal-cost settings (`Pattern.search_candidates` in the
  kernels' registry).  A-shape and block-sparse costs do not depend on the data: their sizes are solved
  exactly with the analytic `Pattern.cost` (granularity: one tile per query block).  Vertical-slash cost
  does depend on where the chosen diagonals fall; its sizes are solved with the kernels' "expected" predictor
  (slashes forming one band) and the search then measures every head's real cost on the built index
  (`head_costs`) and shrinks heads that overshoot (see `search.py`).
* `head_costs` is `kernel_cost` split per head (same formula; `test_search.py` checks the sum).
"""
from __future__ import annotations

import torch

from ..kernels import PATTERNS, HeadPattern, SparseIndex, dense_cost
from ..kernels.index import head_kernel_cost, triton_cdiv
from ..kernels.patterns import StreamLLM, VerticalSlash

__all__ = ["dense_cost", "tile_flops", "head_costs", "candidates_for_budget", "minference_budget", "cost_tolerance",
           "A_SHAPE_SINK_BLOCKS", "VS_SLASH_SHARES"]

# the candidate grids are the patterns' own (kept here under their old names for readers of the search)
A_SHAPE_SINK_BLOCKS = StreamLLM.search_sink_blocks
VS_SLASH_SHARES = VerticalSlash.search_slash_shares


def tile_flops(d: int, block: int) -> int:
    return 4 * block * block * d


def head_costs(index: SparseIndex, d: int) -> torch.Tensor:
    """Per-head FLOPs (Hq,) float64 that the kernels execute for `index` (summed over the batch)."""
    return head_kernel_cost(index, d)


def cost_tolerance(n: int, d: int, block: int = 64) -> float:
    """Slack when comparing costs: half a tile per query block (sizes move in whole tiles)."""
    return 0.5 * triton_cdiv(n, block) * tile_flops(d, block)


def candidates_for_budget(n: int, d: int, budget: float, block: int = 64) -> list[HeadPattern]:
    """Candidate settings of every registered pattern whose kernel cost at length n is `budget` × dense
    (each pattern's `search_candidates`: the largest sizes whose analytic cost fits the budget).

    Returns a de-duplicated list; sizes are in tokens (A-shape, vertical-slash) or blocks (block-sparse).
    Settings that would need more than dense (budget too big for a pattern) are clamped to what the
    pattern can do at n; budget >= 1 returns only ``dense``.
    """
    if budget >= 1.0:
        return [next(kind.reference(n, block) for kind in PATTERNS.values() if kind.dense)]
    target = budget * dense_cost(n, d, block)
    out: list[HeadPattern] = []
    for kind in PATTERNS.values():
        out += kind.search_candidates(budget, n, d, block)
    # below a pattern's minimum cost (e.g. A-shape's sink + diagonal block) a setting cannot reach the
    # budget: keep only settings within one tile per query block of max(target, cheapest setting)
    costs = [p.kind.cost(p, n, d, block) for p in out]
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
    vs = PATTERNS[VerticalSlash.name]
    return min(1.0, vs.cost(vs.reference(n, block), n, d, block) / dense_cost(n, d, block))
