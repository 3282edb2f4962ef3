"""The compact model's forward that also returns hidden states of chosen layers (EAGLE-3's features).

``CompactLM.forward`` / ``forward_exact`` return only the final-norm hidden state. A feature-level drafter
needs the residual stream at a low, a middle and a high layer (the *input* of decoder layer i, as
transformers' ``hidden_states[i]``, SGLang and vLLM define it). These functions are those two forwards
step for step -- the same layer functions, masks and branches, so logits are bit-identical to the model's
own forward -- with the capture added. They go away once the engine's model forward takes a
``capture_layers`` argument (issue 11's drafter protocol); keep them in sync with runtime/llama.py until then.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import llama as _llama

__all__ = ["forward_features", "forward_exact_features"]


def _check(model, layers):
    if model.max_seq_len == 0:
        raise RuntimeError("call model.setup_cache(max_batch, max_seq_len) before forward")
    n = len(model.layers)
    if not layers or any(not 0 <= i < n for i in layers):
        raise ValueError(f"feature layers {list(layers)} must lie in 0..{n - 1}")


def forward_features(model, layers, input_ids, input_pos, *, mask=None, write_pos=None, last_only: bool = False):
    """``model.forward`` -> (logits, final hidden (B, T, H), features (B, T, len(layers)*H))."""
    _check(model, layers)
    B, T = input_ids.shape
    if B > model.max_batch:
        raise ValueError(f"batch {B} > cache batch {model.max_batch}: call setup_cache with a larger max_batch")
    write_pos = input_pos if write_pos is None else write_pos
    sparse_ok = model.patterns is not None and T >= model.sparse_min_len
    at_zero = mask is None and (T > _llama._SHORT_T or sparse_ok) and int(write_pos[0, 0]) == 0
    from_zero = at_zero and T > _llama._SHORT_T
    dense_mask = mask
    if not from_zero and mask is None:
        slots = torch.arange(model.max_seq_len, device=input_ids.device)
        dense_mask = (slots <= write_pos[..., None])[:, None]  # (B, 1, T, S)
    dt = model.dtype
    cos = model.rope_cos[input_pos].to(dt)[:, :, None]  # (B, T, 1, D)
    sin = model.rope_sin[input_pos].to(dt)[:, :, None]
    rows = torch.arange(B, device=input_ids.device)[:, None]
    if T <= _llama._SHORT_T and dense_mask is not None:
        G = model.n_head // model.n_kv
        dense_mask = dense_mask[:, :, None].expand(B, 1, G, T, dense_mask.shape[-1]).reshape(B, 1, G * T, -1)
    if dense_mask is not None:
        dense_mask = torch.full_like(dense_mask, float("-inf"), dtype=dt).masked_fill_(dense_mask, 0.0)
    x = F.embedding(input_ids, model.tok_embeddings)  # (B, T, H)
    sparse = sparse_ok and at_zero
    feats = {}
    for i, layer in enumerate(model.layers):
        if i in layers:
            feats[i] = x
        if sparse:
            x = _llama.layer_forward(x, cos, sin, rows, write_pos, dense_mask, *layer.args(B), model.n_head,
                                     model.n_kv, patterns=model.patterns[i])
        elif from_zero:
            x = _llama.layer_forward(x, cos, sin, rows, write_pos, None, *layer.args(B), model.n_head, model.n_kv,
                                     causal_self=True)
        else:
            x = model.layer_fn(x, cos, sin, rows, write_pos, dense_mask, *layer.args(B), model.n_head, model.n_kv)
    hidden = model.norm(x)
    h = hidden[:, -1:] if last_only else hidden
    if model.logits_fp32 and model.dtype != torch.float32:
        if model._w32 is None:
            model._w32 = model.output.weight.float()
        logits = F.linear(h.float(), model._w32)
    else:
        logits = model.output(h)
    return logits, hidden, torch.cat([feats[i] for i in layers], dim=-1)


def forward_exact_features(model, layers, input_ids, input_pos, write_pos, start, n_prefix, n_keys,
                           ancestors=None, last_only: bool = False):
    """``model.forward_exact`` -> (logits, final hidden (B, T, H), features (B, T, len(layers)*H))."""
    _check(model, layers)
    B, T = input_ids.shape
    if B == 1 and (T > _llama.EXACT_PREFILL_MAX or (model.patterns is not None and T >= model.sparse_min_len)):
        return forward_features(model, layers, input_ids, input_pos, write_pos=write_pos, last_only=last_only)
    from ...kernels.invariant_linear import linear, rms_norm

    rows = torch.arange(B, device=input_ids.device)[:, None].expand(B, T).contiguous()
    input_pos, write_pos = input_pos.contiguous(), write_pos.contiguous()
    layout = (start.contiguous(), n_prefix.contiguous(), n_keys.contiguous(), ancestors)
    x = F.embedding(input_ids, model.tok_embeddings)
    feats = {}
    for i, layer in enumerate(model.layers):
        if i in layers:
            feats[i] = x
        a, m = layer.attn, layer.mlp
        x = _llama.layer_forward_exact(x, input_pos, rows, write_pos, layout, model.rope_cos, model.rope_sin,
                                       a.k_cache, a.v_cache, layer.attn_norm.weight, a.wqkv.weight, a.wqkv.bias,
                                       a.wo.weight, a.wo.bias, layer.mlp_norm.weight, m.w13.weight, m.w2.weight,
                                       layer.attn_norm.eps, model.n_head, model.n_kv)
    hidden = rms_norm(x, model.norm.weight, model.norm.eps)
    h = hidden[:, -1:] if last_only else hidden
    return linear(h, model.output.weight, model.output.bias), hidden, torch.cat([feats[i] for i in layers], dim=-1)
