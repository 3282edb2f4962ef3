"""What a model family is, and the ``ModelArgs`` the compact model is built from.

``ModelArgs`` is read ONCE from a transformers config (gpt-fast's ``ModelArgs``): the compact model
never looks at ``hf.config`` again. A ``Family`` says what one ``model_type`` supports (rope types,
biases, q/k norm, sliding window) and maps one HF decoder layer onto the compact layer's weights.
Adding an architecture = one file in this folder that defines a ``Family`` + one line in the
registry (``families/__init__.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["ModelArgs", "Family", "LayerWeights", "rope_params", "rope_inv_freq", "hf_layer_weights"]


def rope_params(cfg) -> dict:
    """The config's RoPE parameters with ``rope_type`` and ``rope_theta`` always present."""
    rp = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rp.setdefault("rope_type", rp.get("type", "default"))
    if "rope_theta" not in rp:
        rp["rope_theta"] = getattr(cfg, "rope_theta", 10000.0)
    return rp


@dataclass(frozen=True)
class ModelArgs:
    """The shape and numerics of a decoder-only LM, as the compact model needs them."""

    model_type: str
    n_layer: int
    n_head: int
    n_kv: int
    head_dim: int
    hidden: int
    vocab: int
    rms_eps: float
    rope: dict = field(default_factory=dict)  # rope_type, rope_theta and the type's own fields
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    attention_bias: bool = False
    tied_embeddings: bool = False
    sliding_window: int | None = None
    max_positions: int = 2048
    hidden_act: str = "silu"
    mlp_bias: bool = False

    @classmethod
    def from_hf_config(cls, cfg, *, qk_norm: bool = False) -> "ModelArgs":
        n_head = cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_head
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        return cls(model_type=cfg.model_type, n_layer=cfg.num_hidden_layers, n_head=n_head, n_kv=n_kv,
                   head_dim=head_dim, hidden=cfg.hidden_size, vocab=cfg.vocab_size, rms_eps=cfg.rms_norm_eps,
                   rope=rope_params(cfg), qk_norm=qk_norm,
                   attention_bias=bool(getattr(cfg, "attention_bias", False)),
                   tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)), sliding_window=window,
                   max_positions=int(getattr(cfg, "max_position_embeddings", 2048) or 2048),
                   hidden_act=getattr(cfg, "hidden_act", "silu"), mlp_bias=bool(getattr(cfg, "mlp_bias", False)))


@dataclass
class LayerWeights:
    """One decoder layer's tensors under the compact model's names (HF storage, not copies)."""

    attn_norm: torch.Tensor
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    mlp_norm: torch.Tensor
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear
    q_norm: torch.Tensor | None = None  # (D,) when the family has q/k norm
    k_norm: torch.Tensor | None = None


def hf_layer_weights(layer, qk_norm: bool = False) -> LayerWeights:
    """The Llama-style HF layer layout (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``),
    shared by every family registered today."""
    a, m = layer.self_attn, layer.mlp
    return LayerWeights(layer.input_layernorm.weight, a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                        layer.post_attention_layernorm.weight, m.gate_proj, m.up_proj, m.down_proj,
                        a.q_norm.weight if qk_norm else None, a.k_norm.weight if qk_norm else None)


@dataclass(frozen=True)
class Family:
    """What the compact model supports for one transformers ``model_type``."""

    model_type: str
    rope_types: frozenset = frozenset({"default", "llama3", "linear"})
    attention_bias: bool = False  # q/k/v (and o) biases allowed
    qk_norm: bool = False
    sliding_window: bool = False  # a window is allowed (the compact model then caps the cache at it)
    layer_weights: Callable = hf_layer_weights

    def args(self, cfg) -> ModelArgs:
        return ModelArgs.from_hf_config(cfg, qk_norm=self.qk_norm)

    def why_unsupported(self, hf_model) -> str | None:
        """None if the compact model runs this model exactly, else the reason in a few words."""
        cfg = hf_model.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            return f"hidden_act {cfg.hidden_act!r} (only 'silu')"
        if getattr(cfg, "mlp_bias", False):
            return "mlp_bias=True"
        if getattr(cfg, "attention_bias", False) and not self.attention_bias:
            return f"attention_bias=True is not supported for {self.model_type}"
        rtype = rope_params(cfg)["rope_type"]
        if rtype not in self.rope_types:
            return f"rope type {rtype!r} (supported: {sorted(self.rope_types)})"
        window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        if window is not None and not self.sliding_window:
            return f"sliding_window={window} is not supported for {self.model_type}"
        if not hasattr(getattr(hf_model, "model", None), "layers"):
            return "no .model.layers (expected a *ForCausalLM)"
        return None


def rope_inv_freq(args_or_cfg, head_dim: int | None = None) -> torch.Tensor:
    """Inverse frequencies (D/2,) fp32 for the rope types HF may carry ('default', 'linear', 'llama3').

    Takes a ``ModelArgs`` or (as before) a transformers config plus ``head_dim``."""
    if isinstance(args_or_cfg, ModelArgs):
        rp, head_dim = args_or_cfg.rope, args_or_cfg.head_dim
    else:
        rp = rope_params(args_or_cfg)
    rtype, base = rp["rope_type"], float(rp["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rtype == "default":
        return inv_freq
    if rtype == "linear":
        return inv_freq / float(rp["factor"])
    if rtype == "llama3":  # same formula as transformers' _compute_llama3_parameters
        factor, lo, hi = float(rp["factor"]), float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
        old_len = float(rp["original_max_position_embeddings"])
        lo_wavelen, hi_wavelen = old_len / lo, old_len / hi
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > lo_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < hi_wavelen) & ~(wavelen > lo_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise NotImplementedError(
        f"rope type {rtype!r} is not supported by the compact model (supported: default, linear, llama3); "
        "use the transformers fallback for this model")
