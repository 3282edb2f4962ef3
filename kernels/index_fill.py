"""One launch that writes every row of a layer's index that no pattern kernel writes itself (Triton).

`index.LayerPlan.build` allocates the layer's index as one uninitialised buffer; vertical-slash heads
write their rows in `vs_fused._block_lists`, and this kernel fills all the others, in full (zero
padding included), from a few ints per head (`index.FilledRows`):

* FILL_ZERO (dense heads): count 0, zero offsets.
* FILL_A_SHAPE (sink, window): the closed form of `index.a_shape_index` (sink blocks, then the key
  blocks of the local window), computed per query block: no cached table, nothing to copy.
* FILL_SELECTED (top-k): block-sparse.  The count is `_block_sparse_consts`' closed form
  (max(min(top-k, causal key blocks), diagonal key blocks)); the offsets are the first `count` key
  blocks of the (B, Hq, M, K) top-k, in score order, sorted ascending and scaled by BLOCK_N.

What it replaces per layer (the Qwen pack's mixed layers): four buffer clones, six index_put and the
block-sparse finishing (two masked fills, a sort, a clone, two gathers, a multiply, a cast).  Every
length-derived int is a runtime argument: one binary for every prompt length (constexprs: the block
sizes and next_pow2 of the block-sparse top-k, a budget).
"""
from __future__ import annotations

__all__ = ["fill_rows"]

import triton
import triton.language as tl

_BIG = tl.constexpr(1 << 30)
# the modes, as `index.FILL_A_SHAPE` / `index.FILL_SELECTED` number them (this module imports nothing
# of ours: `index` imports it lazily; tests/test_index_launch_budget.py checks they agree)
_A_SHAPE = tl.constexpr(1)
_SELECTED = tl.constexpr(2)


@triton.jit(do_not_specialize=["n", "M", "MB", "MC", "K", "Hq", "HF"])
def _fill_rows(PARAMS, SEL, BC, BO, CC, CI, n, M, MB, MC, K, Hq, HF, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, PM: tl.constexpr, K_PAD: tl.constexpr, CH: tl.constexpr):
    """Grid (B*HF, cdiv(M, PM)): program (b*HF + j, i) writes query blocks [i*PM, (i+1)*PM) of the row
    of head PARAMS[j, 0] (mode PARAMS[j, 1], parameters PARAMS[j, 2:4])."""
    t = tl.program_id(0)
    b = t // HF
    j = t % HF
    h = tl.load(PARAMS + j * 4)
    mode = tl.load(PARAMS + j * 4 + 1)
    p1 = tl.load(PARAMS + j * 4 + 2)
    p2 = tl.load(PARAMS + j * 4 + 3)
    m = tl.program_id(1) * PM + tl.arange(0, PM)
    mok = m < M
    rows = (b * Hq + h).to(tl.int64) * M + m                           # (PM,) rows of the (B*Hq*M) lists
    r0 = m * BLOCK_M
    r1 = tl.minimum(r0 + BLOCK_M, n)
    hi = (r1 - 1) // BLOCK_N                                            # last (diagonal) key block
    c = tl.arange(0, CH)
    if mode == _A_SHAPE:   # p1 = sink, p2 = window
        lo = tl.maximum(r0 - p2 + 1, 0) // BLOCK_N                     # first local key block
        ns = tl.maximum(tl.minimum(tl.cdiv(p1, BLOCK_N) + m * 0, lo), 0)   # sink blocks before it
        cnt = ns + hi - lo + 1
        for c0 in range(0, MB, CH):
            jj = c0 + c[None, :]
            blk = tl.where(jj < ns[:, None], jj, lo[:, None] + jj - ns[:, None])
            tl.store(BO + rows[:, None] * MB + jj, tl.where(jj < cnt[:, None], blk * BLOCK_N, 0),
                     mask=mok[:, None] & (jj < MB))
    elif mode == _SELECTED:   # p1 = top-k
        cnt = tl.maximum(tl.minimum(p1, hi + 1), hi - r0 // BLOCK_N + 1)
        kk = tl.arange(0, K_PAD)[None, :]
        s = tl.load(SEL + ((b * Hq + h).to(tl.int64) * M + m[:, None]) * K + kk,
                    mask=mok[:, None] & (kk < K), other=_BIG)
        s = tl.sort(tl.where(kk < cnt[:, None], s, _BIG), 1)           # the count kept, ascending
        tl.store(BO + rows[:, None] * MB + kk, tl.where(kk < cnt[:, None], s * BLOCK_N, 0).to(tl.int32),
                 mask=mok[:, None] & (kk < K))
        for c0 in range(0, MB, CH):
            jj = c0 + c[None, :]
            tl.store(BO + rows[:, None] * MB + jj, tl.zeros([PM, CH], dtype=tl.int32),
                     mask=mok[:, None] & (jj >= K) & (jj < MB))
    else:                      # dense (computed by SDPA): nothing kept
        cnt = tl.zeros([PM], dtype=tl.int32)
        for c0 in range(0, MB, CH):
            jj = c0 + c[None, :]
            tl.store(BO + rows[:, None] * MB + jj, tl.zeros([PM, CH], dtype=tl.int32), mask=mok[:, None] & (jj < MB))
    tl.store(BC + rows, cnt, mask=mok)
    tl.store(CC + rows, tl.zeros([PM], dtype=tl.int32), mask=mok)
    for c0 in range(0, MC, CH):
        jj = c0 + c[None, :]
        tl.store(CI + rows[:, None] * MC + jj, tl.zeros([PM, CH], dtype=tl.int32), mask=mok[:, None] & (jj < MC))


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def fill_rows(plan, sel, bc, bo, cc, ci) -> None:
    """`_fill_rows` for a `index.LayerPlan`; sel: the selecting kind's (B, Hq, M, K) ids or None."""
    K = plan.K if sel is not None else 1
    if sel is None:
        sel = bc   # never read: no head of the layer selects
    PM = 16
    _fill_rows[(plan.B * plan.HF, triton.cdiv(plan.M, PM))](
        plan.params, sel, bc, bo, cc, ci, plan.N, plan.M, plan.MB, plan.MC, K, plan.Hq, plan.HF,
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, PM=PM, K_PAD=max(16, _next_pow2(K)), CH=64, num_warps=4)

