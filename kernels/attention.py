"""Public entry: `sparse_attention(q, k, v, patterns)` — one call per layer.

Builds ONE `SparseIndex` for all sparse heads of the layer (mixed patterns allowed), runs ONE kernel
launch (Triton on CUDA, the chunked PyTorch reference elsewhere), and computes `dense` heads with SDPA
(cuDNN preferred on GPU: it is the fastest dense kernel there).  GQA is native throughout.

On the GPU path (fused vertical-slash estimation + Triton) a layer makes no host sync, whatever mix of
patterns its heads have (tests/test_prefill_sync.py): every output size comes from (N, budgets, block
sizes), and which heads are dense is a host tuple from the patterns.  The host cost per layer is the
launches, so what depends only on the patterns and the shape is made once per (layout, shape)
(`index.LayerPlan`, cached by `patterns._fast_plan`) and the index is written in place: an
all-vertical-slash layer is 5 Triton launches (index 4, kernel 1), a mixed one adds one fill launch and
block-sparse's pooling/matmul/topk (tests/test_index_launch_budget.py, scripts/gpu/index_host_cost.py).
"""
from __future__ import annotations

import math
import os

import torch

from .dense import dense_causal_sdpa, dense_heads_sdpa, sdpa_ctx  # noqa: F401 (re-exported)
from .patterns import HeadPattern, build_index
from .reference import sparse_attention_reference


def _resolve_impl(impl: str, q: torch.Tensor) -> str:
    if impl == "auto":
        return "triton" if q.is_cuda else "reference"
    if impl == "triton" and not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("impl='triton' on CPU needs TRITON_INTERPRET=1 (slow; for tests)")
    if impl not in ("triton", "reference"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'reference', got {impl!r}")
    return impl


def default_blocks(patterns, q) -> tuple[int, int]:
    """Tile sizes.  Measured on an H200 (Llama-3-8B shape, results/experiments/sparse-sweep-h200.json):
    128x64 tiles (4 warps, 2 stages) are fastest for vertical-slash at 32K and 128K; block-sparse keeps
    64-key blocks (128-key blocks double its density at the same top-k budget).  head_dim 64
    (results/raw/sparse-speed-h200.log, 14q/2kv): 128x64 tiles (4 warps, 3 stages) are best at 31K and
    tie 128x128 at 16K.  The numbers live in `triton_sparse.TILE_TABLE` (per head_dim and prompt length,
    edited from the GPU sweep).  CPU / small D: 64x64."""
    if not q.is_cuda or q.shape[-1] < 64:
        return 64, 64
    from .triton_sparse import tiles_for   # Triton: imported only where it runs
    bm, bn = tiles_for(q.shape[-1], q.shape[2])
    caps = [p.kind.max_block_n for p in patterns if p.kind.max_block_n]   # e.g. block-sparse: 64
    bn = min([bn] + caps)
    if bm % bn:   # the fused conversion needs BLOCK_M a multiple of BLOCK_N
        bn = math.gcd(bm, bn)
    return bm, bn


def is_single_pattern(patterns) -> bool:
    """One pattern for every head: a HeadPattern, a name, or one ``[name, size_1, size_2, score]`` entry."""
    return isinstance(patterns, (HeadPattern, str)) or (
        isinstance(patterns, (list, tuple)) and bool(patterns) and isinstance(patterns[0], str))


def normalize_patterns(patterns, num_heads: int) -> list[HeadPattern]:
    """One layer's patterns (one for all heads, a per-head list, or a MInference layer dict) -> Hq HeadPatterns."""
    if is_single_pattern(patterns):
        patterns = [patterns] * num_heads
    if isinstance(patterns, dict):  # MInference layer entry {"0": [...], ...}
        patterns = [patterns[k] for k in sorted(patterns, key=int)]
    out = [HeadPattern.from_list(p) for p in patterns]
    if len(out) != num_heads:
        raise ValueError(f"{len(out)} patterns for {num_heads} query heads")
    return out


def sparse_attention(q, k, v, patterns, *, impl: str = "auto", scale: float | None = None,
                     return_index: bool = False, block_m: int | None = None, block_n: int | None = None,
                     last_q: int = 64, dense_above: float | None = None, fused: bool | None = None,
                     dense_tail: int = 0, **kernel_kwargs):
    """Causal prefill attention with per-head sparse patterns.

    ``dense_above``: if the index built for this input keeps more than this share of the dense causal
    work (diffuse attention makes vertical-slash estimates spread over the whole sequence), run dense
    cuDNN attention instead — at the kernels' measured 60-80 % of cuDNN's throughput, sparse only pays
    below that. Off by default so tests see exactly the kept keys; the runtime passes 0.6.

    q (B,Hq,N,D); k, v (B,Hkv,N,D) with Hq % Hkv == 0; `patterns`: one HeadPattern (or
    [name, size_1, size_2, score]) per query head, or a single one for all heads.
    ``fused``: the fused Triton vertical-slash estimation (None: on CUDA; True on the CPU needs
    TRITON_INTERPRET=1, for tests of the GPU path).
    ``dense_tail``: the last this many query rows attend to all their keys (exact causal attention,
    `dense.dense_tail_sdpa`): a prompt's question rows, at a cost of rows/N of a dense row set. The
    returned index describes the sparse part only.
    Returns out (B,Hq,N,D) [, SparseIndex].
    """
    B, Hq, N, D = q.shape
    pats = normalize_patterns(patterns, Hq)
    impl = _resolve_impl(impl, q)
    if block_m is None or block_n is None:
        bm, bn = default_blocks(pats, q)
        block_m, block_n = block_m or bm, block_n or bn
    if all(p.is_dense for p in pats):
        out = dense_causal_sdpa(q, k, v, scale)
        if return_index:
            return out, build_index(q, k, pats, block_m, block_n, last_q=last_q, scale=scale, fused=fused)
        return out
    index = build_index(q, k, pats, block_m, block_n, last_q=last_q, scale=scale, fused=fused)
    if dense_above is not None and index.density() > dense_above:
        out = dense_causal_sdpa(q, k, v, scale)
        return (out, index) if return_index else out
    if impl == "triton":
        from .triton_sparse import sparse_attention_triton
        out = sparse_attention_triton(q, k, v, index, scale, **kernel_kwargs)
    else:
        out = sparse_attention_reference(q, k, v, index, scale)
    if dense_tail:
        from .dense import dense_tail_sdpa
        dense_tail_sdpa(q, k, v, out, dense_tail, scale)
    return (out, index) if return_index else out
