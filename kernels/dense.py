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

__all__ = ["dense_causal_sdpa", "dense_heads_sdpa", "dense_tail_sdpa", "sdpa_ctx"]


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


def dense_heads_sdpa(q, k, v, out, dense_heads, scale=None):
    """Overwrite out[:, h] for the dense heads with causal SDPA.  A partial set of heads gathers its
    kv heads (an O(N·D) copy per head, negligible next to the O(N²·D) attention) and runs
    FlashAttention first (no per-length plan build, see the module docstring).
    `dense_heads`: the head numbers (a sequence of ints, `SparseIndex.dense_head_ids`: known on the
    host, so picking the heads reads nothing back and copies nothing to the device per call) or a
    (Hq,) bool mask (read on the host once: a tensor on the GPU would be a sync)."""
    Hq, Hkv = q.shape[1], k.shape[1]
    if isinstance(dense_heads, torch.Tensor):
        dense_heads = [h for h, f in enumerate(dense_heads.tolist()) if f]
    hs = tuple(int(h) for h in dense_heads)
    if not hs:
        return out
    if len(hs) == Hq:
        out.copy_(dense_causal_sdpa(q, k, v, scale))
        return out
    G = Hq // Hkv
    hs_d, kv = _head_index(hs, G, q.device)
    first = os.environ.get("ACCEL_DENSE_HEADS_BACKEND", "flash")
    with sdpa_ctx(q.device.type, first):
        o = F.scaled_dot_product_attention(q[:, hs_d], k[:, kv], v[:, kv], is_causal=True, scale=scale)
    out[:, hs_d] = o
    return out


_HEADS: dict = {}


def _head_index(hs: tuple, G: int, device):
    """(query heads, their kv heads) as int64 tensors on `device`, made once per (heads, G, device):
    a host->device copy per call would be a sync point and could not be captured in a CUDA graph."""
    key = (hs, G, str(device))
    t = _HEADS.get(key)
    if t is None:
        if len(_HEADS) > 1024:   # bounded: distinct dense-head sets of one process
            _HEADS.clear()
        t = _HEADS[key] = (torch.tensor(hs, dtype=torch.int64, device=device),
                           torch.tensor([h // G for h in hs], dtype=torch.int64, device=device))
    return t


def dense_tail_sdpa(q, k, v, out, rows: int, scale=None):
    """Overwrite the last ``rows`` query rows of ``out`` (B, Hq, N, D) with exact causal attention over
    all their keys.  The last rows of a prompt are its question or instruction: the first answer token
    is computed from them, and they are where long-range facts (every needle value, every occurrence of
    a word) must be gathered, which a sparse pattern estimated from those same rows can miss.  They are
    a sliver of the work (rows·N of N²/2 pairs: 0.4 % for 64 rows at 32K).  GQA is folded into the
    query axis (the G query heads of a kv head become G·rows rows) so SDPA takes the bottom-right
    causal mask without a repeat_kv copy of K and V."""
    B, Hq, N, D = q.shape
    t = min(int(rows), N)
    if t <= 0:
        return out
    Hkv = k.shape[1]
    G = Hq // Hkv
    qt = q[:, :, N - t:].reshape(B, Hkv, G * t, D)                       # (B, Hkv, G*t, D)
    mask = _tail_mask(N, t, G, q.device)                                  # (G*t, N) bool
    with sdpa_ctx(q.device.type, "flash"):
        o = F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, scale=scale)
    out[:, :, N - t:] = o.reshape(B, Hq, t, D)
    return out


_TAIL_MASKS: dict = {}


def _tail_mask(n: int, t: int, g: int, device):
    """Row i of the last t rows (position n-t+i) keeps keys 0..n-t+i; repeated for the G folded heads.
    Built once per (n, t, G, device): a new prompt length costs one small mask, no host read."""
    key = (n, t, g, str(device))
    m = _TAIL_MASKS.get(key)
    if m is None:
        if len(_TAIL_MASKS) > 64:   # bounded: a mask is t·G·n bytes (1.8 MB at 32K, 64 rows, G=7)
            _TAIL_MASKS.clear()
        pos = torch.arange(n - t, n, device=device)[:, None]
        m = (torch.arange(n, device=device)[None, :] <= pos).repeat(g, 1)
        _TAIL_MASKS[key] = m
    return m
