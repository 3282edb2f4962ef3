"""Dense causal attention through SDPA with native GQA (no repeat_kv), cuDNN first on a GPU: the
baseline every sparse kernel is measured against, and the path for heads whose pattern is dense.

Why a layer with SOME dense heads uses FlashAttention rather than cuDNN (issue 12): PyTorch's cuDNN
SDPA builds (and caches) an execution plan per input shape; the first call at an unseen prompt
length costs 80-120 ms on an H200, measured as the extra cost of mixed layers at a new length while
all-sparse layers (no SDPA call) added 0.3 ms.  FlashAttention-2's kernels are precompiled for every
length, so the few dense heads of a mixed layer pay no per-length setup; they are a small share of
the layer's work, so cuDNN's higher throughput matters less there than the plan build.  Whole-dense
layers (the baseline, `dense_above` fallback) keep cuDNN first.  `ACCEL_DENSE_HEADS_BACKEND=cudnn`
restores cuDNN for the partial path (to re-measure the trade-off)."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

__all__ = ["dense_causal_sdpa", "dense_heads_sdpa", "sdpa_ctx"]


def sdpa_ctx(device_type: str, first: str = "cudnn"):
    """SDPA backend order for a CUDA call: `first` ("cudnn" or "flash") leads, the rest fall back."""
    if device_type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if first == "flash":
        order[0], order[1] = order[1], order[0]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # older torch without set_priority
        return sdpa_kernel(order)


def dense_causal_sdpa(q, k, v, scale=None):
    """Causal SDPA with native GQA (no repeat_kv), cuDNN first on GPU."""
    with sdpa_ctx(q.device.type):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])


def dense_heads_sdpa(q, k, v, out, dense_heads: torch.Tensor, scale=None):
    """Overwrite out[:, h] for the dense heads with causal SDPA.  A partial set of heads gathers its
    kv heads (an O(N·D) copy per head, negligible next to the O(N²·D) attention) and runs
    FlashAttention first (no per-length plan build, see the module docstring).
    `dense_heads` is the index's CPU bool mask, so picking the heads needs no device sync."""
    Hq, Hkv = q.shape[1], k.shape[1]
    hs = torch.nonzero(dense_heads.cpu()).flatten()
    if hs.numel() == Hq:
        out.copy_(dense_causal_sdpa(q, k, v, scale))
        return out
    hs_d = hs.to(q.device, non_blocking=True)
    kv = hs_d // (Hq // Hkv)
    first = os.environ.get("ACCEL_DENSE_HEADS_BACKEND", "flash")
    with sdpa_ctx(q.device.type, first):
        o = F.scaled_dot_product_attention(q[:, hs_d], k[:, kv], v[:, kv], is_causal=True, scale=scale)
    out[:, hs_d] = o
    return out
