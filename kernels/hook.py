"""transformers hook: per-layer, per-head sparse prefill for Llama / Qwen2 / Mistral-family models.

`enable_sparse_prefill(model, patterns, min_len=...)` registers an attention function named
``accel_sparse`` in transformers' `AttentionInterface` AND the SDPA mask builder under the same name in
`AttentionMaskInterface` (without the latter transformers builds no causal mask for an unknown
implementation and the model silently attends bidirectionally on every dense fallback), stores each
layer's head patterns on its attention module (found by `module.layer_idx`) and switches the model to
the new implementation.  The attention function uses the sparse kernel only for a plain causal prefill
(q_len == k_len >= min_len, no padding mask); decoding, short prompts, padded batches and
`dense`-only layers go to transformers' own SDPA path unchanged.

`capture_qk(model, on_qk)` is the other use of the same registration (the offline search): every
layer's post-RoPE q/k go to a callback and the layer's output stays transformers' own SDPA, so the
model computes exactly its dense forward.  One helper registers both (`register_attention`), one
switches implementations (`set_attention_implementation`).
"""
from __future__ import annotations

import contextlib

import torch

from .attention import is_single_pattern, normalize_patterns, sparse_attention
from .patterns import from_minference

IMPL_NAME = "accel_sparse"
_ATTR = "_accel_sparse_cfg"


def accel_sparse_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                   scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cfg = getattr(module, _ATTR, None)
    q_len, k_len = query.shape[2], key.shape[2]
    use_sparse = (
        cfg is not None
        and cfg["patterns"] is not None
        and q_len == k_len and q_len >= cfg["min_len"]
        and attention_mask is None          # sdpa_mask returns None for plain causal, no padding
        and (dropout == 0.0 or not module.training)
        and kwargs.get("softcap") is None
        and kwargs.get("sliding_window") is None
        and (is_causal is None or is_causal)
        and not all(p.is_dense for p in cfg["patterns"])
    )
    if not use_sparse:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = sparse_attention(query, key, value, cfg["patterns"], impl=cfg["impl"], scale=scaling,
                           **cfg["kwargs"])                                          # (B, Hq, N, D)
    cfg["calls"] += 1
    return out.transpose(1, 2).contiguous(), None                                    # (B, N, Hq, D)


def register_attention(name: str, fn) -> None:
    """Register `fn` as transformers attention implementation `name`, with the SDPA mask builder under
    the same name (without it transformers builds no causal mask for an unknown implementation)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    assert name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def set_attention_implementation(model, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except Exception:  # older/newer transformers without the dynamic setter: set the config directly
        model.config._attn_implementation = name


def _register():
    register_attention(IMPL_NAME, accel_sparse_attention_forward)


CAPTURE_IMPL = "accel_capture"
_CAPTURE: dict = {}


def _capture_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling=None, is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    on_qk = _CAPTURE.get("on_qk")
    if on_qk is not None and query.shape[2] == key.shape[2]:
        on_qk(getattr(module, "layer_idx", None), query, key, scaling)             # (B,Hq,N,D), (B,Hkv,N,D)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)


@contextlib.contextmanager
def capture_qk(model, on_qk):
    """Inside the block, each prefill attention call of `model` first calls ``on_qk(layer_idx, q, k,
    scaling)`` with post-RoPE q (B,Hq,N,D) and k (B,Hkv,N,D), then runs transformers' SDPA unchanged."""
    register_attention(CAPTURE_IMPL, _capture_attention_forward)
    prev = model.config._attn_implementation
    _CAPTURE["on_qk"] = on_qk
    set_attention_implementation(model, CAPTURE_IMPL)
    try:
        yield
    finally:
        _CAPTURE.pop("on_qk", None)
        set_attention_implementation(model, prev or "sdpa")


def _layer_patterns(patterns, num_layers: int, num_heads: int):
    if is_single_pattern(patterns):
        return [normalize_patterns(patterns, num_heads)] * num_layers   # one pattern everywhere
    if isinstance(patterns, (list, tuple)) and patterns and isinstance(patterns[0], dict):
        patterns = from_minference(list(patterns))
    patterns = list(patterns)
    if len(patterns) != num_layers:
        raise ValueError(f"{len(patterns)} layer entries for a model with {num_layers} layers")
    return [None if p is None else normalize_patterns(p, num_heads) for p in patterns]


def _attention_modules(model):
    for mod in model.modules():
        if hasattr(mod, "layer_idx") and type(mod).__name__.endswith("Attention"):
            yield mod


def enable_sparse_prefill(model, patterns, min_len: int = 4096, impl: str = "auto", **kwargs):
    """Use per-head sparse prefill in `model`.

    patterns: a MInference config (list of ``{"head": [name, s1, s2, score]}``), a list over layers of
    per-head lists (None for an untouched layer), or one pattern for every head.  Prompts shorter than
    `min_len` and all decoding steps stay dense SDPA.  Extra kwargs go to `sparse_attention`
    (block_m, block_n, last_q, kernel tuning).  Returns the model.
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    per_layer = _layer_patterns(patterns, L, H)
    _register()
    found = 0
    for mod in _attention_modules(model):
        setattr(mod, _ATTR, {"patterns": per_layer[mod.layer_idx], "min_len": int(min_len),
                             "impl": impl, "kwargs": dict(kwargs), "calls": 0})
        found += 1
    if found == 0:
        raise ValueError(f"{type(model).__name__}: no attention modules with `layer_idx` found")
    if not hasattr(model, "_accel_prev_attn"):
        model._accel_prev_attn = model.config._attn_implementation
    set_attention_implementation(model, IMPL_NAME)
    return model


def disable_sparse_prefill(model):
    """Back to the implementation the model had before `enable_sparse_prefill`."""
    for mod in _attention_modules(model):
        if hasattr(mod, _ATTR):
            delattr(mod, _ATTR)
    set_attention_implementation(model, getattr(model, "_accel_prev_attn", "sdpa"))
    if hasattr(model, "_accel_prev_attn"):
        del model._accel_prev_attn
    return model


def sparse_calls(model) -> int:
    """How many sparse (non-fallback) attention calls the model made since enabling (for tests/logs)."""
    return sum(getattr(m, _ATTR, {}).get("calls", 0) for m in _attention_modules(model))
