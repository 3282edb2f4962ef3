"""Sparse-prefill patterns: the `HeadPattern` value and the registry of pattern kinds.

A layer's prefill is described by one `HeadPattern` per query head.  The names and the meaning of
`size_1` / `size_2` follow MInference's saved config so that its JSON (one list entry per layer,
``{"<head>": [name, size_1, size_2, score]}``) round-trips through `from_minference` / `to_minference`:

=====================  ==========================  ===============================
name                   size_1                      size_2
=====================  ==========================  ===============================
``vertical_and_slash`` v: kept key columns          s: kept diagonals ("slashes")
``stream_llm``         sink: first keys kept        local window (keys) per query
``block_sparse``       top-k key blocks per q-block unused (0)
``dense``              unused (0)                   unused (0)
=====================  ==========================  ===============================

Design: every pattern kind is ONE class, registered once (`@register`) under its MInference name and
aliases, that owns everything pattern-specific: size bounds (`validate`), which index builder of
`index.py` it runs (`build`), how its rows of a layer's index are written on the GPU (`fast_rows`:
optional, a kind without it sends its layers through `build`), its kernel-aware cost (`cost`), its
equal-cost search settings (`search_candidates`) and how its sizes follow the prompt length (`scale`).
Everything else (the pack, the search, the CLI tables, the kernels' dispatch) iterates over `PATTERNS`
or asks a `HeadPattern` for its `.kind`, so adding a pattern is one class here and nothing else.
`HeadPattern` stays a plain value object (name, size_1, size_2, score).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from .index import (FILL_A_SHAPE, FILL_SELECTED, FILL_ZERO, SLASH_KEEP, VERTICAL_KEEP, FilledRows, LayerPlan,
                    LayerShape, SparseIndex, _dev_index, a_shape_index, a_shape_width, assemble_index,
                    block_sparse_topk, block_sparse_width, check_qkv, estimate_block_sparse,
                    top_vertical_slash, triton_cdiv, use_fused, vertical_slash_index, vertical_slash_scores,
                    vertical_slash_scores_fused)

__all__ = ["HeadPattern", "Pattern", "PatternError", "PATTERNS", "PATTERN_NAMES", "SCALING_RULES",
           "get_pattern", "register", "validate_entry", "build_index", "pattern_cost", "dense_cost", "predicted_work",
           "layer_work_shares",
           "from_minference", "to_minference", "VerticalSlash", "StreamLLM", "BlockSparse", "Dense"]

SCALING_RULES = ("proportional", "absolute")
MAX_SIZE = (1 << 31) - 1   # sizes end up as int32 key positions / counts in the index


class PatternError(ValueError):
    """A pattern name, size or entry the kernels cannot run; ``str()`` is one line naming the field."""


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


def _as_size(kind: str, field: str, val) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, float, str)):
        raise PatternError(f"{kind}: {field} must be an integer number of tokens/blocks, got {val!r}")
    try:
        num = float(val)
    except ValueError:
        raise PatternError(f"{kind}: {field} must be an integer number of tokens/blocks, got {val!r}") from None
    if num != num or not num.is_integer():
        raise PatternError(f"{kind}: {field} must be an integer number of tokens/blocks, got {val!r}")
    num = int(num)
    if num < 0:
        raise PatternError(f"{kind}: {field} must be >= 0, got {num}")
    if num > MAX_SIZE:
        raise PatternError(f"{kind}: {field} must be <= {MAX_SIZE} (the index stores int32), got {num}")
    return num


_STATIC_PARTS: dict = {}   # index parts of static patterns (A-shape), per (shape, sizes, blocks, device)


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------
class Pattern:
    """One pattern kind.  Subclasses set the class attributes and override the hooks below."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    label: str = ""                       # short column title for tables and plot legends
    fields: tuple[str, str] = ("size_1", "size_2")  # what size_1 / size_2 mean (for messages)
    dense: bool = False                   # computed by dense causal attention, not the sparse kernel
    exact_cost: bool = True               # `cost` is what the kernel runs on any data (else a prediction)
    tie_rank: int = 0                     # search: near-equal recall goes to the lowest rank
    max_block_n: int | None = None        # widest key block the kernels should use for it
    static: bool = False                  # its index parts depend only on (shape, sizes, blocks), not on q/k

    # ---- sizes ---------------------------------------------------------------------------------
    def validate(self, size_1, size_2) -> tuple[int, int]:
        """-> (size_1, size_2) as ints, or PatternError naming the bad field."""
        s1 = _as_size(self.name, f"size_1 ({self.fields[0]})", size_1)
        s2 = _as_size(self.name, f"size_2 ({self.fields[1]})", size_2)
        self._check(s1, s2)
        return s1, s2

    def _check(self, size_1: int, size_2: int) -> None:
        """Pattern-specific bounds beyond integer >= 0."""

    # ---- index ---------------------------------------------------------------------------------
    def build(self, q, k, heads: list[int], patterns: list["HeadPattern"], block_m: int, block_n: int,
              last_q: int, scale: float | None, fused: bool | None = None) -> list[tuple]:
        """Index parts for `heads` (all of this kind): [(heads, count (B,h,M), offset (B,h,M,*),
        column_count (B,h,M) or None, column_index (B,h,M,*) or None)], see `index.assemble_index`. ``fused``: use the
        fused Triton estimation where the kind has one (None = on CUDA)."""
        raise NotImplementedError

    def fast_rows(self, heads: list[int], patterns: list["HeadPattern"], shape: LayerShape):
        """This kind's rows on the GPU path (`index.LayerPlan`: the layer's index written in place), from
        the layer's shape alone, made once per (layout, shape): an `index.FilledRows` (the fill launch
        writes them from a few ints per head) or an object with ``widths() -> (block slots, column
        slots)`` and ``write(q, k, scale, bc, bo, cc, ci)`` that writes its heads' rows itself, in full.
        None (the default): no such path, the layer is built with `build` + `index.assemble_index`."""
        return None

    # ---- cost ----------------------------------------------------------------------------------
    def block_tiles(self, p: "HeadPattern", r0: int, r1: int, n: int, block: int, mode: str) -> int:
        """(query block, key block) tiles the kernel runs for query rows [r0, r1)."""
        raise NotImplementedError

    def cost(self, p: "HeadPattern", n: int, d: int = 128, block: int = 64, mode: str = "expected") -> int:
        """Analytic per-head FLOPs at length n without building an index (block_m = block_n = block),
        4·block²·d per tile, padding included.  Exact for the static patterns."""
        return int(self.costs([(p.size_1, p.size_2)], n, d, block, mode)[0])

    def tiles(self, s1, s2, r0, r1, n: int, block: int, mode: str):
        """`block_tiles` for many patterns and query blocks at once: s1, s2 (P, 1) int64 sizes; r0, r1
        (1, M) row bounds -> (P, M) tiles.  A kind without a tensor form gets the per-block loop."""
        return None

    def costs(self, sizes, n: int, d: int = 128, block: int = 64, mode: str = "expected"):
        """`cost` of P patterns of this kind at length n: ``sizes`` [(size_1, size_2)] -> (P,) int64.
        Planning a prompt prices every head of every layer (runtime.prefill) on the request path: one
        tensor expression per kind instead of a Python loop over query blocks (which cost ~50 ms per
        plan for a 24-layer, 14-head pack at 31K on the H200 host)."""
        M = triton_cdiv(n, block)
        r0 = (torch.arange(M, dtype=torch.int64) * block)[None]             # (1, M)
        r1 = torch.clamp(r0 + block, max=n)
        sz = torch.tensor(list(sizes), dtype=torch.int64).reshape(-1, 2)
        t = self.tiles(sz[:, :1], sz[:, 1:], r0, r1, n, block, mode)           # (P, M)
        if t is None:
            t = torch.tensor([[sum(self.block_tiles(HeadPattern(self.name, a, b), m * block,
                                                     min((m + 1) * block, n), n, block, mode) for m in range(M))]
                              for a, b in sz.tolist()], dtype=torch.int64)
        return 4 * block * block * d * t.sum(dim=1)

    # ---- search --------------------------------------------------------------------------------
    def search_candidates(self, budget: float, n: int, d: int, block: int = 64) -> list["HeadPattern"]:
        """Settings of this pattern whose analytic cost at length n is at most `budget` × dense
        (for each, the largest sizes that fit)."""
        return []

    # ---- length scaling ------------------------------------------------------------------------
    def scale(self, p: "HeadPattern", searched_len: int, actual_len: int,
              rule: str = "proportional") -> "HeadPattern":
        """Sizes for a prompt of `actual_len` tokens from a pattern searched at `searched_len`.

        ``absolute`` (MInference): sizes unchanged — cost grows ~linearly with N, density falls.
        ``proportional`` (our default): sizes that measure a share of the context scale with N, so
        the density the search chose holds at every length (each kind says which, and its floors)."""
        if rule not in SCALING_RULES:
            raise PatternError(f"scaling rule {rule!r} unknown: use one of {SCALING_RULES}")
        if rule == "absolute" or self.dense or searched_len == actual_len:
            return HeadPattern(p.name, p.size_1, p.size_2, p.score)
        if searched_len <= 0 or actual_len <= 0:
            raise PatternError("searched_len and actual_len must be positive")
        return self._scale(p, actual_len / searched_len)

    def _scale(self, p: "HeadPattern", f: float) -> "HeadPattern":
        return HeadPattern(p.name, p.size_1, p.size_2, p.score)

    # ---- other ---------------------------------------------------------------------------------
    def reference(self, n: int, block: int = 64) -> "HeadPattern":
        """The common setting benchmarks and CLI defaults use at length n."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pattern {self.name}>"


PATTERNS: dict[str, Pattern] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[Pattern]) -> type[Pattern]:
    """Class decorator: add a pattern kind to `PATTERNS` (its name and aliases must be new)."""
    inst = cls()
    for key in (inst.name, *inst.aliases):
        if key in PATTERNS or key in _ALIASES:
            raise ValueError(f"pattern name {key!r} is registered twice")
    PATTERNS[inst.name] = inst
    _ALIASES.update({a: inst.name for a in inst.aliases})
    return cls


def get_pattern(name) -> Pattern:
    """The registered kind for a name or alias (case-insensitive), else PatternError."""
    key = str(name).lower()
    kind = PATTERNS.get(_ALIASES.get(key, key))
    if kind is None:
        raise PatternError(f"unknown pattern {str(name)!r}; expected one of {tuple(PATTERNS)} "
                           f"(aliases: {sorted(_ALIASES)})")
    return kind


def _sc(x: int, f: float, floor: int) -> int:
    """x scaled by f, but never below min(x, floor) (the always-needed part of a pattern)."""
    return max(min(x, floor), int(round(x * f)))


@register
class VerticalSlash(Pattern):
    """Top-v key columns + top-s diagonals, estimated online from the last queries' softmax."""

    name, aliases, label = "vertical_and_slash", ("vertical_slash", "vs"), "v-slash"
    fields = ("v", "s")
    tie_rank = 2
    exact_cost = False   # scattered diagonals cost more tiles than the band `cost` predicts
    search_slash_shares = (0.9, 0.7, 0.5, 0.3)   # share of the budget a candidate gives to slashes

    def _check(self, v, s):
        if v + s == 0:
            raise PatternError("vertical_and_slash needs v (size_1) + s (size_2) > 0; use 'dense' or a real budget")
        if s < 1:
            raise PatternError("vertical_and_slash needs s (size_2) >= 1: the main diagonal is always kept")

    def build(self, q, k, heads, patterns, block_m, block_n, last_q, scale, fused=None):
        # one softmax for all heads; each head then takes its own top-v / top-s from the same scores.
        # On CUDA the fused Triton estimation (vs_fused: no (last_q, N) slab, no host sync) gives the
        # same indices as the torch reference.
        fast = use_fused(fused, q, last_q, block_m, block_n)
        scores = vertical_slash_scores_fused if fast else vertical_slash_scores
        col, diag = scores(q, k, last_q=last_q, scale=scale)                           # (B, Hq, N) x2
        if heads != list(range(q.shape[1])):  # an all-vertical-slash layer needs no gather
            hsel = _dev_index(heads, q.device)
            col, diag = col[:, hsel], diag[:, hsel]
        return [(heads, *self.parts_from_scores(col, diag, [patterns[h] for h in heads],
                                                q.shape[2], block_m, block_n, fused=fast))]

    def fast_rows(self, heads, patterns, shape):
        # scores, per-head selection and conversion in 4 Triton launches writing the index rows
        from .vs_fused import VSRows
        s = shape
        return VSRows(s.B, s.Hq, s.Hkv, s.N, s.D, heads, [(patterns[h].size_1, patterns[h].size_2) for h in heads],
                      s.last_q, s.block_m, s.block_n, s.device, keep=(VERTICAL_KEEP, SLASH_KEEP))

    def parts_from_scores(self, col, diag, patterns, n, block_m, block_n, fused: bool = False):
        """(count, offset, column_count, column_index) from `vertical_slash_scores` of these heads:
        the search scores many (v, s) settings on one estimation through this."""
        # the fused conversion sorts its inputs itself: top-k order is enough (no sort launches here)
        vert, sl = top_vertical_slash(col, diag, [(p.size_1, p.size_2) for p in patterns], sort=not fused)
        if fused:
            from .vs_fused import vertical_slash_index_fused
            return vertical_slash_index_fused(vert, sl, n, block_m, block_n)
        return vertical_slash_index(vert, sl, n, block_m, block_n)

    def index_from_scores(self, col, diag, patterns, n, block_m, block_n) -> SparseIndex:
        """A whole layer's `SparseIndex` when every head is vertical-slash (col, diag: (B, Hq, N))."""
        return SparseIndex(*self.parts_from_scores(col, diag, patterns, n, block_m, block_n), n, block_m, block_n)

    def block_tiles(self, p, r0, r1, n, block, mode):
        # "expected": the s slashes form one band of the nearest diagonals (the usual shape in real
        # models) and every vertical outside it is a gathered column; "upper": s isolated diagonals
        s, v = min(p.size_2, n), min(p.size_1, n)
        if mode == "upper":
            st = min(s, triton_cdiv(r1, block) + 1)
            band = s
        else:
            band = min(s + block - 1, r1)   # keys [r0-s+1, r1)
            st = triton_cdiv(band, block)
        cols = max(0, min(v, r1 - band)) if mode == "expected" else min(v, r1)
        return st + triton_cdiv(cols, block)

    def tiles(self, s1, s2, r0, r1, n, block, mode):   # `block_tiles` on tensors (same integer arithmetic)
        s, v = torch.clamp(s2, max=n), torch.clamp(s1, max=n)
        if mode == "upper":
            st = torch.minimum(-(-r1 // block) + 1, s)
            cols = torch.minimum(r1, v)
        else:
            band = torch.minimum(r1, s + block - 1)
            st = -(-band // block)
            cols = torch.minimum(torch.clamp(r1 - band, min=0), v) if mode == "expected" else torch.minimum(r1, v)
        return st + -(-cols // block)

    def search_candidates(self, budget, n, d, block=64):
        target = budget * dense_cost(n, d, block)
        out = []
        for share in self.search_slash_shares:   # a band of s diagonals, the rest buys v columns
            s = _solve_monotone(lambda x: self.cost(HeadPattern(self.name, 0, x), n, d, block), share * target, 1, n)
            v = _solve_monotone(lambda x: self.cost(HeadPattern(self.name, x, s), n, d, block), target, 0, n)
            out.append(HeadPattern(self.name, v, s))
        return out

    def _scale(self, p, f):   # v and s scale; floors: the first keys and the nearest diagonals
        return HeadPattern(p.name, _sc(p.size_1, f, VERTICAL_KEEP), max(1, _sc(p.size_2, f, SLASH_KEEP)), p.score)

    def reference(self, n, block=64):
        return HeadPattern(self.name, 1000, 6096)   # MInference's default budget


@register
class StreamLLM(Pattern):
    """A-shape: the first `sink` keys + a local window; static (no estimation)."""

    name, aliases, label = "stream_llm", ("a_shape", "ashape", "streaming"), "A-shape"
    static = True
    fields = ("sink", "window")
    tie_rank = 0
    search_sink_blocks = (1, 2, 4)   # candidates: sink of this many key blocks, window takes the rest

    def _check(self, sink, window):
        if window < 1:
            raise PatternError("stream_llm needs a local window (size_2) >= 1 so each query sees itself")

    def build(self, q, k, heads, patterns, block_m, block_n, last_q, scale, fused=None):
        B, N, dev = q.shape[0], q.shape[2], q.device
        sizes = tuple((h, patterns[h].size_1, patterns[h].size_2) for h in heads)
        # static: the parts depend only on (batch, length, sizes, blocks), so they are built once and
        # reused by every layer and prompt of that shape (~30 small launches per distinct size saved;
        # consumers copy them into the layer's index, never write them)
        key = ("stream_llm", B, N, sizes, block_m, block_n, str(dev))
        parts = _STATIC_PARTS.get(key)
        if parts is None:
            if len(_STATIC_PARTS) > 1024:   # bounded: distinct (shape, layer layout) pairs of a process
                _STATIC_PARTS.clear()
            parts = _STATIC_PARTS[key] = self._build(B, N, dev, heads, patterns, block_m, block_n)
        return list(parts)

    def fast_rows(self, heads, patterns, shape):
        # the fill launch computes `a_shape_index`'s closed form per query block: nothing cached, copied
        sizes = tuple((patterns[h].size_1, patterns[h].size_2) for h in heads)
        mb = max(a_shape_width(shape.N, s, w, shape.block_m, shape.block_n) for s, w in sizes)
        return FilledRows(FILL_A_SHAPE, tuple(heads), sizes, (mb, 1))

    @staticmethod
    def _build(B, N, dev, heads, patterns, block_m, block_n):
        M = triton_cdiv(N, block_m)
        by_size: dict[tuple, list[int]] = {}   # identical for every head of one size: build once
        for h in heads:
            by_size.setdefault((patterns[h].size_1, patterns[h].size_2), []).append(h)
        parts = []
        for (sink, win), hs in by_size.items():
            c, o = a_shape_index(N, sink, win, block_m, block_n, dev)
            nh = len(hs)
            parts.append((hs, c.expand(B, nh, M), o.expand(B, nh, *o.shape),
                          torch.zeros(B, nh, M, dtype=torch.int32, device=dev),
                          torch.zeros(B, nh, M, 1, dtype=torch.int32, device=dev)))
        return tuple(parts)

    def block_tiles(self, p, r0, r1, n, block, mode):
        lo = max(r0 - p.size_2 + 1, 0) // block
        hi = (r1 - 1) // block
        return min(triton_cdiv(p.size_1, block), lo) + hi - lo + 1

    def tiles(self, s1, s2, r0, r1, n, block, mode):
        lo = torch.clamp(r0 - s2 + 1, min=0) // block
        hi = (r1 - 1) // block
        return torch.minimum(-(-s1 // block), lo) + hi - lo + 1

    def search_candidates(self, budget, n, d, block=64):
        # a window of w·block keys touches w+1 key blocks per query block (the diagonal one included);
        # w = 0 -> window 1 (diagonal block only)
        target = budget * dense_cost(n, d, block)
        win = lambda w: max(1, w * block)  # noqa: E731
        out = []
        for sb in self.search_sink_blocks:
            sink = sb * block
            if sink >= n:
                continue
            w = _solve_monotone(lambda x: self.cost(HeadPattern(self.name, sink, win(x)), n, d, block),
                                target, 0, triton_cdiv(n, block))
            out.append(HeadPattern(self.name, sink, win(w)))
        return out

    def _scale(self, p, f):   # the sink stays absolute (sinks are the first tokens whatever the length)
        return HeadPattern(p.name, p.size_1, _sc(p.size_2, f, 64), p.score)

    def reference(self, n, block=64):
        return HeadPattern(self.name, 1024, 4096)


@register
class BlockSparse(Pattern):
    """Top-k key blocks per query block from mean-pooled Q/K scores (diagonal block always kept)."""

    name, aliases, label = "block_sparse", ("blocksparse",), "block"
    fields = ("top-k", "unused")
    tie_rank = 1
    max_block_n = 64   # 128-key blocks double its density at the same top-k budget

    def _check(self, topk, _unused):
        if topk < 1:
            raise PatternError("block_sparse needs top-k (size_1) >= 1: the diagonal block is always kept")

    def build(self, q, k, heads, patterns, block_m, block_n, last_q, scale, fused=None):
        B, Hq, N = q.shape[:3]
        M, dev = triton_cdiv(N, block_m), q.device
        # estimate for all heads (one batched op) but only these heads' top-k matter: others get 1,
        # so a vertical-slash head's v=1000 never inflates the selection tensors
        mine = set(heads)
        tk = [max(patterns[h].size_1, 1) if h in mine else 1 for h in range(Hq)]
        cnt, sel = estimate_block_sparse(q, k, tk, block_m, block_n)
        if len(heads) < Hq:
            hsel = _dev_index(heads, dev)
            cnt, sel = cnt[:, hsel], sel[:, hsel]
        # no gathered columns (None): the assembled index's zeros stand, nothing to write
        return [(heads, cnt, (sel * block_n).to(torch.int32), None, None)]

    def fast_rows(self, heads, patterns, shape):
        # scores and top-k in torch (pooling, one matmul, one where, one topk); the fill launch sorts
        # each head's first `count` ids and writes them as key offsets (count from the shape alone)
        mine = set(heads)
        tks = tuple(max(patterns[h].size_1, 1) if h in mine else 1 for h in range(shape.Hq))
        bm, bn = shape.block_m, shape.block_n
        return FilledRows(FILL_SELECTED, tuple(heads), tuple((tks[h], 0) for h in heads),
                          (block_sparse_width(shape.N, tks, bm, bn), 1),
                          lambda q, k: block_sparse_topk(q, k, tks, bm, bn))

    def block_tiles(self, p, r0, r1, n, block, mode):
        return max(min(p.size_1, triton_cdiv(r1, block)), 1)

    def tiles(self, s1, s2, r0, r1, n, block, mode):
        return torch.clamp(torch.minimum(s1, -(-r1 // block)), min=1)

    def search_candidates(self, budget, n, d, block=64):
        target = budget * dense_cost(n, d, block)
        k = _solve_monotone(lambda x: self.cost(HeadPattern(self.name, x), n, d, block), target, 1,
                            triton_cdiv(n, block))
        return [HeadPattern(self.name, k, 0)]

    def _scale(self, p, f):
        return HeadPattern(p.name, max(1, _sc(p.size_1, f, 2)), p.size_2, p.score)

    def reference(self, n, block=64):
        return HeadPattern(self.name, max(1, round(0.025 * triton_cdiv(n, 64))))   # ~5% of causal tiles


@register
class Dense(Pattern):
    """Full causal attention (SDPA / cuDNN); the fallback, never a search candidate."""

    name, aliases, label = "dense", ("full",), "dense"
    fields = ("unused", "unused")
    dense = True
    static = True
    tie_rank = 3

    def build(self, q, k, heads, patterns, block_m, block_n, last_q, scale, fused=None):
        return []   # flagged in `dense_heads`; the kernels never read their counts

    def fast_rows(self, heads, patterns, shape):
        return FilledRows(FILL_ZERO, tuple(heads), ((0, 0),) * len(heads), (1, 1))

    def block_tiles(self, p, r0, r1, n, block, mode):
        return triton_cdiv(r1, block)

    def tiles(self, s1, s2, r0, r1, n, block, mode):
        return (-(-r1 // block)).expand(s1.shape[0], -1)

    def reference(self, n, block=64):
        return HeadPattern(self.name)


# the built-in names, in table order (code that must see later registrations iterates `PATTERNS`)
PATTERN_NAMES = tuple(PATTERNS)


# --------------------------------------------------------------------------------------------
# the value object
# --------------------------------------------------------------------------------------------
@dataclass
class HeadPattern:
    """One query head's prefill pattern; see the module docstring for `size_1` / `size_2`."""

    name: str
    size_1: int = 0
    size_2: int = 0
    score: float = 0.0

    def __post_init__(self):
        kind = get_pattern(self.name)
        self.name = kind.name
        self.size_1, self.size_2 = kind.validate(self.size_1, self.size_2)
        try:
            self.score = float(self.score)
        except (TypeError, ValueError):
            raise PatternError(f"{self.name}: score must be a number, got {self.score!r}") from None

    @property
    def kind(self) -> Pattern:
        return PATTERNS[self.name]

    @property
    def is_dense(self) -> bool:
        return self.kind.dense

    # ---- MInference exchange format -------------------------------------------------------
    def to_list(self) -> list:
        return [self.name, self.size_1, self.size_2, self.score]

    @classmethod
    def from_list(cls, entry) -> "HeadPattern":
        if isinstance(entry, HeadPattern):
            return entry
        if isinstance(entry, str):
            return cls(entry)
        if isinstance(entry, dict):
            try:
                return cls(**entry)
            except TypeError:
                raise PatternError(f"pattern entry must have keys name, size_1, size_2, score; got {entry!r}") from None
        try:
            entry = list(entry)
        except TypeError:
            raise PatternError(f"pattern entry must be [name, size_1, size_2, score], got {entry!r}") from None
        if not 1 <= len(entry) <= 4:
            raise PatternError(f"pattern entry must be [name, size_1, size_2, score], got {entry!r}")
        return cls(*entry)


def validate_entry(entry) -> HeadPattern:
    """A stored entry ``[name, size_1, size_2(, score)]`` (the pack's and MInference's form) -> HeadPattern,
    else PatternError saying what is wrong."""
    if not (isinstance(entry, list) and 3 <= len(entry) <= 4 and isinstance(entry[0], str)):
        raise PatternError(f"bad pattern entry {entry!r} (expected [name, size_1, size_2, score], "
                           f"name in {tuple(PATTERNS)})")
    try:
        return HeadPattern.from_list(entry)
    except PatternError as e:
        raise PatternError(f"bad pattern entry {entry!r}: {e}") from None


def from_minference(config) -> list[list[HeadPattern]]:
    """MInference config (list over layers of ``{"head": [name, s1, s2, score]}``) -> per-layer head lists.

    Heads are ordered by their integer key; a missing head is an error (every query head needs a pattern).
    """
    if isinstance(config, dict):  # a single layer
        config = [config]
    layers = []
    for li, layer in enumerate(config):
        if isinstance(layer, dict):
            keys = sorted(layer, key=lambda k: int(k))
            if [int(k) for k in keys] != list(range(len(keys))):
                raise PatternError(f"layer {li}: head keys must be 0..H-1, got {keys}")
            layers.append([HeadPattern.from_list(layer[k]) for k in keys])
        else:
            layers.append([HeadPattern.from_list(e) for e in layer])
    return layers


def to_minference(layers) -> list[dict]:
    """Per-layer head lists -> MInference config (JSON-serialisable)."""
    return [{str(h): HeadPattern.from_list(p).to_list() for h, p in enumerate(layer)} for layer in layers]


# --------------------------------------------------------------------------------------------
# what the registry gives the rest of the package
# --------------------------------------------------------------------------------------------
def build_index(q, k, patterns: list, block_m: int = 64, block_n: int = 64,
                last_q: int = 64, scale: float | None = None, *, fused: bool | None = None) -> SparseIndex:
    """One `SparseIndex` for a layer: ``patterns[h]`` is query head h's pattern (a list of Hq).

    Heads are grouped by kind; each kind builds its heads' part with `index.py`'s builders (one
    estimation per kind for the whole layer), and the parts become one index for one kernel launch.
    On the GPU (where the fused estimation runs) every kind's `fast_rows` instead writes its rows of one
    preallocated index (`index.LayerPlan`, made once per layout and shape): the same index, bit for bit,
    in a handful of launches and no copy."""
    check_qkv(q, k)
    B, Hq, N, D = q.shape
    patterns = [HeadPattern.from_list(p) for p in patterns]
    if len(patterns) != Hq:
        raise PatternError(f"need one pattern per query head: {Hq} heads, {len(patterns)} patterns")
    groups, static_key, dense, key = _layout(patterns)
    if _gpu_path(fused, q, last_q, block_m, block_n, groups):
        plan = _fast_plan(key, groups, patterns, LayerShape(B, Hq, k.shape[1], N, D, block_m, block_n, last_q,
                                                             q.device))
        if plan is not None:   # every kind of the layer has a GPU path
            return plan.build(q, k, D ** -0.5 if scale is None else scale)
    parts, static_parts = [], []
    for kind, heads in groups:
        built = kind.build(q, k, heads, patterns, block_m, block_n, last_q, scale, fused)
        # shape-only parts (A-shape, dense) are assembled once per layout and shape, then reused
        (static_parts if kind.static else parts).extend(built)
    return assemble_index(parts, B, Hq, N, block_m, block_n, dense, q.device,
                          static_parts=static_parts, static_key=static_key)


_LAYOUTS: dict = {}


def _layout(patterns: list[HeadPattern]):
    """What a layer's patterns alone decide, made once per distinct pattern list (every prefill of a
    pack reuses it): [(kind, heads)] in first-head order, the static parts' cache key, dense flags, and
    the layout's own key."""
    key = tuple((p.name, p.size_1, p.size_2) for p in patterns)
    lay = _LAYOUTS.get(key)
    if lay is None:
        if len(_LAYOUTS) > 4096:   # bounded: distinct layers x prompt lengths of a process
            _LAYOUTS.clear()
        groups: dict[str, list[int]] = {}
        for h, p in enumerate(patterns):
            groups.setdefault(p.name, []).append(h)
        kinds = [(PATTERNS[name], heads) for name, heads in groups.items()]
        static_key = tuple((kind.name, tuple((h, *key[h]) for h in heads)) for kind, heads in kinds if kind.static)
        lay = _LAYOUTS[key] = (kinds, static_key, [p.is_dense for p in patterns], key)
    return lay


def _gpu_path(fused, q, last_q, block_m, block_n, groups) -> bool:
    """The in-place GPU path (`index.LayerPlan`): where the fused vertical-slash estimation runs (on
    CUDA, or fused=True under TRITON_INTERPRET for tests); a layer without vertical-slash heads takes it
    on CUDA whatever its head_dim."""
    if any(kind.name == VerticalSlash.name for kind, _ in groups):
        return use_fused(fused, q, last_q, block_m, block_n)
    if fused is None:
        return q.is_cuda
    return bool(fused) and (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


_PLANS: dict = {}


def _fast_plan(key, groups, patterns, shape: LayerShape):
    """The layer's `index.LayerPlan` for this shape, made once (None: a kind without a GPU path)."""
    pkey = (key, *shape[:-1], str(shape.device))
    if pkey in _PLANS:
        return _PLANS[pkey]
    if len(_PLANS) > 1024:   # bounded: distinct layers x prompt lengths of a process (plans are small)
        _PLANS.clear()
    rows = [kind.fast_rows(heads, patterns, shape) for kind, heads in groups]
    plan = None
    if all(r is not None for r in rows):
        plan = LayerPlan(rows, shape.B, shape.Hq, shape.N, shape.block_m, shape.block_n,
                         [p.is_dense for p in patterns], shape.device)
    _PLANS[pkey] = plan
    return plan


def pattern_cost(pattern, n: int, d: int = 128, block: int = 64, mode: str = "expected") -> int:
    """Analytic per-head FLOPs of `pattern` at length n, without building an index (block_m = block_n = block).

    Exact for dense, stream_llm and block_sparse (same rounding as the builders).  vertical_and_slash
    depends on the data: ``mode="expected"`` assumes the s slashes form one band of the nearest
    diagonals (ceil((s+block-1)/block) tiles, capped by causality) and that every vertical outside the
    band is a gathered column; ``mode="upper"`` assumes s isolated diagonals (one tile each) — an upper
    bound on the slash part.
    """
    p = HeadPattern.from_list(pattern)
    return p.kind.cost(p, n, d, block, mode)


def predicted_work(layers, n: int, d: int = 128, block: int = 64) -> float:
    """Mean over [layer][head] patterns of `pattern_cost` / `dense_cost` at length n: the share of dense
    causal attention FLOPs the sparse kernels are predicted to run (block padding included)."""
    shares = layer_work_shares(layers, n, d, block)
    heads = [len(layer) for layer in layers]
    return float(sum(s * h for s, h in zip(shares, heads)) / sum(heads))


def layer_work_shares(layers, n: int, d: int = 128, block: int = 64) -> list[float]:
    """Per layer, the mean over its heads of `pattern_cost` / `dense_cost` at length n (`predicted_work`
    of each layer), priced with one tensor expression per pattern kind for the whole model."""
    pats = [[HeadPattern.from_list(p) for p in layer] for layer in layers]
    by_kind: dict[str, list[tuple[int, int]]] = {}
    where: list[tuple[str, int]] = []
    for layer in pats:
        for p in layer:
            lst = by_kind.setdefault(p.name, [])
            where.append((p.name, len(lst)))
            lst.append((p.size_1, p.size_2))
    priced = {name: PATTERNS[name].costs(sizes, n, d, block).tolist() for name, sizes in by_kind.items()}
    dense = dense_cost(n, d, block)
    out, i = [], 0
    for layer in pats:
        costs = [priced[name][j] for name, j in where[i:i + len(layer)]]
        i += len(layer)
        out.append(sum(costs) / dense / len(costs))
    return out


@lru_cache(maxsize=256)  # every predicted_work call prices dense at the prompt's length
def dense_cost(n: int, d: int = 128, block: int = 64) -> int:
    """FLOPs of one head's causal dense attention with the kernels' tiles (block padding included)."""
    return PATTERNS[Dense.name].cost(HeadPattern(Dense.name), n, d, block)
