"""accel.kernels — sparse prefill (MInference patterns) with native GQA.

Public surface: the pattern registry (`PATTERNS`, `get_pattern`: one class per pattern kind) and its
value object `HeadPattern`, the unified `SparseIndex` and its builders, the kernel-aware
cost model, `sparse_attention` (Triton on CUDA, PyTorch reference anywhere) and the transformers hook
`enable_sparse_prefill` (imported lazily so importing this package needs no transformers internals).
"""
from .index import (SparseIndex, estimate_block_sparse, estimate_vertical_slash, kept_mask, kernel_cost,
                    vertical_slash_scores)
from .patterns import (PATTERNS, HeadPattern, PatternError, build_index, dense_cost, from_minference,
                       get_pattern, pattern_cost, to_minference)
from .reference import sparse_attention_reference
from .attention import sparse_attention

__all__ = [
    "PATTERNS", "get_pattern", "PatternError", "HeadPattern", "SparseIndex", "build_index", "kept_mask",
    "kernel_cost", "pattern_cost", "dense_cost", "vertical_slash_scores",
    "sparse_attention", "sparse_attention_reference", "estimate_vertical_slash",
    "estimate_block_sparse", "enable_sparse_prefill", "from_minference", "to_minference",
]


def __getattr__(name):
    if name in ("enable_sparse_prefill", "disable_sparse_prefill"):
        from . import hook
        return getattr(hook, name)
    raise AttributeError(name)
