"""accel.kernels — sparse prefill (MInference patterns) with native GQA.

Public surface: patterns (`HeadPattern`), the unified `SparseIndex` and its builders, the kernel-aware
cost model, `sparse_attention` (Triton on CUDA, PyTorch reference anywhere) and the transformers hook
`enable_sparse_prefill` (imported lazily so importing this package needs no transformers internals).
"""
from .index import (SparseIndex, build_index, estimate_block_sparse, estimate_vertical_slash,
                    kept_mask, kernel_cost, pattern_cost)
from .patterns import HeadPattern, from_minference, to_minference
from .reference import sparse_attention_reference
from .attention import sparse_attention

__all__ = [
    "HeadPattern", "SparseIndex", "build_index", "kept_mask", "kernel_cost", "pattern_cost",
    "sparse_attention", "sparse_attention_reference", "estimate_vertical_slash",
    "estimate_block_sparse", "enable_sparse_prefill", "from_minference", "to_minference",
]


def __getattr__(name):
    if name in ("enable_sparse_prefill", "disable_sparse_prefill"):
        from . import hook
        return getattr(hook, name)
    raise AttributeError(name)
