"""Dense causal attention through SDPA with native GQA (no repeat_kv), cuDNN first on a GPU: the
baseline every sparse kernel is measured against, and the path for heads whose pattern is dense."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = ["dense_causal_sdpa", "dense_heads_sdpa", "sdpa_ctx"]


def sdpa_ctx(device_type: str):
    if device_type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
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
    kv heads (an O(N·D) copy per head, negligible next to the O(N²·D) attention)."""
    Hq, Hkv = q.shape[1], k.shape[1]
    hs = torch.nonzero(dense_heads.cpu()).flatten()
    if hs.numel() == Hq:
        out.copy_(dense_causal_sdpa(q, k, v, scale))
        return out
    hs_d = hs.to(q.device)
    kv = hs_d // (Hq // Hkv)
    with sdpa_ctx(q.device.type):
        o = F.scaled_dot_product_attention(q[:, hs_d], k[:, kv], v[:, kv], is_causal=True, scale=scale)
    out[:, hs_d] = o
    return out
