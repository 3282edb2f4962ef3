"""Forwards of the compact model that also return hidden states of chosen layers (EAGLE-3's features).

A feature-level drafter needs the residual stream at a low, a middle and a high layer: the *input* of
decoder layer i, as transformers' ``hidden_states[i]``, SGLang and vLLM define it. ``CompactLM.forward``
returns the *outputs* of the layers it is asked for (``features=``), so the input of layer i is the
output of layer i - 1; the final-norm hidden state is feature -1. These wrappers only translate.
"""

from __future__ import annotations

import torch

from ..attention_meta import AttentionMeta

__all__ = ["forward_features", "forward_exact_features", "forward_meta_features"]


def _check(model, layers):
    if model.max_seq_len == 0:
        raise RuntimeError("call model.setup_cache(max_batch, max_seq_len) before forward")
    n = len(model.layers)
    if not layers or any(not 1 <= i < n for i in layers):
        raise ValueError(f"feature layers {list(layers)} must lie in 1..{n - 1} (the inputs of those decoder layers)")


def forward_meta_features(model, layers, input_ids, meta: AttentionMeta, backend: str = "sdpa",
                          last_only: bool = False):
    """-> (logits, final hidden (B, T, H), features (B, T, len(layers)*H)) for any ``AttentionMeta``."""
    _check(model, layers)
    logits, f = model(input_ids, meta, backend=backend, last_only=last_only,
                      features=[i - 1 for i in layers] + [-1])  # (F+1, B, T, H)
    return logits, f[-1], torch.cat(list(f[:-1]), dim=-1)


def forward_features(model, layers, input_ids, input_pos, *, last_only: bool = False):
    """The SDPA forward at positions ``input_pos`` (slot == position, causal; a >64-token chunk from 0 is
    a fresh prompt)."""
    return forward_meta_features(model, layers, input_ids, AttentionMeta.from_positions(input_pos), "sdpa", last_only)


def forward_exact_features(model, layers, input_ids, input_pos, write_pos, start, n_prefix, n_keys,
                           ancestors=None, last_only: bool = False, fresh: bool = False):
    """The batch-invariant forward with the key layout given directly (see ``AttentionMeta``)."""
    meta = AttentionMeta(input_pos, write_pos, start, n_prefix, n_keys, ancestors, fresh=fresh)
    return forward_meta_features(model, layers, input_ids, meta, "exact", last_only)
