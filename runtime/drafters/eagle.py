"""EAGLE-3-style feature-level draft model (Li et al. 2025), eager PyTorch.

Design points:
- Input at position t: the base model's hidden states at three layers (low / mid / high; ``feature_layers``
  are indices into transformers' ``hidden_states``, i.e. the *input* of decoder layer i, which is what
  SGLang and vLLM capture) fused by ``fc`` (3H -> H), plus the embedding of token t+1. One Llama decoder
  layer whose attention reads ``cat[input_layernorm(emb), hidden_norm(h)]`` (2H wide) with ``h`` as the
  residual, then ``norm`` and the base's frozen ``lm_head``: the query at t predicts token t+2.
- Later draft steps feed the layer's own pre-norm output back as ``h`` (no fc), so each step sees what
  was drafted before it: the draft runs autoregressively over features, unlike Medusa's heads.
- Embedding and ``lm_head`` are the base model's tensors (``attach_base``), kept as non-persistent buffers:
  ``state_dict()`` holds only the draft's own weights, under EAGLE-3's checkpoint names (``fc.weight``,
  ``midlayer.self_attn.q_proj.weight``, ..., ``norm.weight``), so export adds just ``lm_head``/``d2t``/``t2d``.
- ``DraftCache``: the layer's own static KV cache (B, Hkv, S, D). Callers write at explicit slots and pass
  a boolean mask over slots, so "rolling back to the accepted path" is only a length change: entries past
  the committed length are ignored and overwritten. Static shapes throughout (CUDA-graph friendly later).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import AccelError
from ..families import ModelArgs, rope_inv_freq

__all__ = ["EagleConfig", "EagleConfigError", "EagleDraft", "DraftCache", "default_feature_layers"]


class EagleConfigError(AccelError):
    """An EAGLE draft config that cannot work (bad sizes, feature layers outside the base model)."""


def default_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low / mid / high capture points (2, L//2, L-3), clamped to 1..L-1 for shallow models
    (layer 0's input is the bare embedding, which the draft already reads)."""
    top, lo = num_layers - 1, min(1, num_layers - 1)
    return tuple(min(max(i, lo), top) for i in (2, num_layers // 2, num_layers - 3))  # type: ignore[return-value]


_LIMITS = {  # key: (type, min, max) -- bounds for configs read from files
    "hidden_size": (int, 1, 65536), "vocab_size": (int, 2, 1 << 22), "num_attention_heads": (int, 1, 1024),
    "num_key_value_heads": (int, 1, 1024), "head_dim": (int, 1, 1024), "intermediate_size": (int, 1, 1 << 20),
    "target_num_layers": (int, 1, 4096), "rms_norm_eps": (float, 0.0, 1.0), "rope_theta": (float, 1.0, 1e12),
    "max_position_embeddings": (int, 1, 1 << 24),
}


@dataclass
class EagleConfig:
    hidden_size: int
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    target_num_layers: int               # decoder layers of the base model
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None     # the base's rope scaling (llama3 / linear), copied verbatim
    max_position_embeddings: int = 8192
    aux_layers: tuple[int, ...] | None = None  # None: default_feature_layers(target_num_layers)

    def __post_init__(self):
        if self.aux_layers is not None:
            self.aux_layers = tuple(int(i) for i in self.aux_layers)
        self.validate()

    def validate(self) -> None:
        for k, (typ, lo, hi) in _LIMITS.items():
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not float(v).is_integer()):
                raise EagleConfigError(f"EAGLE config {k}={v!r} must be a number ({typ.__name__})")
            if not lo <= v <= hi:
                raise EagleConfigError(f"EAGLE config {k}={v} is outside [{lo}, {hi}]; rebuild the draft for this model")
        if self.num_attention_heads % self.num_key_value_heads:
            raise EagleConfigError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                                   f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise EagleConfigError(f"head_dim {self.head_dim} must be even (RoPE)")
        if self.aux_layers is not None:
            if len(self.aux_layers) != 3:
                raise EagleConfigError(f"aux_layers must name 3 base layers (low, mid, high), got {list(self.aux_layers)}")
            bad = [i for i in self.aux_layers if not 0 <= i < self.target_num_layers]
            if bad:
                raise EagleConfigError(f"aux_layers {bad} are outside the base model's layers 0..{self.target_num_layers - 1}")

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Indices into transformers' ``hidden_states`` (= input of decoder layer i) fused by ``fc``."""
        return self.aux_layers if self.aux_layers is not None else default_feature_layers(self.target_num_layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aux_layers"] = list(self.feature_layers)
        return d

    @classmethod
    def from_dict(cls, d) -> "EagleConfig":
        """Bounds-checked: unknown keys, missing keys and out-of-range values raise EagleConfigError."""
        if not isinstance(d, dict):
            raise EagleConfigError(f"EAGLE config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise EagleConfigError(f"EAGLE config has unknown keys {unknown}; expected a subset of {sorted(names)}")
        missing = sorted(k for k in _LIMITS if k not in d and k not in ("rms_norm_eps", "rope_theta",
                                                                        "max_position_embeddings"))
        if missing:
            raise EagleConfigError(f"EAGLE config lacks {missing}; re-export the draft")
        rs = d.get("rope_scaling")
        if rs is not None and not isinstance(rs, dict):
            raise EagleConfigError("EAGLE config rope_scaling must be an object or null")
        aux = d.get("aux_layers")
        if aux is not None and (not isinstance(aux, (list, tuple)) or not all(isinstance(i, int) for i in aux)):
            raise EagleConfigError("EAGLE config aux_layers must be a list of 3 integers")
        return cls(**d)

    @classmethod
    def for_base(cls, cfg, aux_layers=None, intermediate_size: int | None = None) -> "EagleConfig":
        """A draft shaped like one layer of the transformers config ``cfg`` of the base model (or of a
        ``CompactLM``: its ``ModelArgs``, the MLP width read off its first layer)."""
        if isinstance(getattr(cfg, "args", None), ModelArgs):
            a = cfg.args
            rp = dict(a.rope)
            theta = float(rp.pop("rope_theta", 10000.0))
            rtype = rp.get("rope_type", "default")
            return cls(hidden_size=a.hidden, vocab_size=a.vocab, num_attention_heads=a.n_head,
                       num_key_value_heads=a.n_kv, head_dim=a.head_dim,
                       intermediate_size=intermediate_size or int(cfg.layers[0].w2.weight.shape[1]),
                       target_num_layers=a.n_layer, rms_norm_eps=float(a.rms_eps), rope_theta=theta,
                       rope_scaling=None if rtype == "default" else rp, max_position_embeddings=int(a.max_positions),
                       aux_layers=aux_layers)
        n_head = cfg.num_attention_heads
        rp = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
        theta = float(rp.pop("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        rtype = rp.get("rope_type", rp.get("type", "default"))
        return cls(hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, num_attention_heads=n_head,
                   num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or n_head,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head,
                   intermediate_size=intermediate_size or cfg.intermediate_size,
                   target_num_layers=cfg.num_hidden_layers, rms_norm_eps=float(cfg.rms_norm_eps),
                   rope_theta=theta, rope_scaling=None if rtype == "default" else rp,
                   max_position_embeddings=int(getattr(cfg, "max_position_embeddings", 8192)),
                   aux_layers=aux_layers)


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, c: EagleConfig):
        super().__init__()
        H, D = c.hidden_size, c.head_dim
        self.q_proj = nn.Linear(2 * H, c.num_attention_heads * D, bias=False)  # reads cat[emb, h]: 2H wide
        self.k_proj = nn.Linear(2 * H, c.num_key_value_heads * D, bias=False)
        self.v_proj = nn.Linear(2 * H, c.num_key_value_heads * D, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * D, H, bias=False)


class _MLP(nn.Module):
    def __init__(self, c: EagleConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _MidLayer(nn.Module):
    def __init__(self, c: EagleConfig):
        super().__init__()
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)   # on the token embedding
        self.hidden_norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)       # on the fused / previous features
        self.self_attn = _Attention(c)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = _MLP(c)


class DraftCache:
    """The draft layer's static KV cache: ``k``, ``v`` (B, Hkv, S, D). ``length`` (host int) is the committed
    prefix; ``rollback(n)`` only moves it (slots past it are dead and get overwritten)."""

    def __init__(self, config: EagleConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len, self.length = max_len, 0

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.max_len:
            raise ValueError(f"rollback length {length} outside [0, {self.max_len}]")
        self.length = length


class EagleDraft(nn.Module):
    """``forward(hidden, token_ids, positions, cache, write_slots, mask) -> (logits (B, T, V), h_out (B, T, H))``.

    hidden (B, T, 3H) base features (fused by fc) or (B, T, H) previous draft outputs; token_ids (B, T) the
    token *after* each position; positions (B, T) RoPE positions; write_slots (B, T) cache slots for the new
    k/v; mask (B, 1, T, S) bool over cache slots, True = attend (must include the written slots).
    """

    def __init__(self, config: EagleConfig, embed_weight: torch.Tensor | None = None,
                 lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        self.config = c = config
        self.fc = nn.Linear(3 * c.hidden_size, c.hidden_size, bias=False)
        self.midlayer = _MidLayer(c)
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        rope_cfg = SimpleNamespace(rope_theta=c.rope_theta, rope_parameters=dict(c.rope_scaling or {}, rope_theta=c.rope_theta))
        self.register_buffer("inv_freq", rope_inv_freq(rope_cfg, c.head_dim), persistent=False)
        self.embed_weight: torch.Tensor | None = None
        self.lm_head_weight: torch.Tensor | None = None
        if embed_weight is not None or lm_head_weight is not None:
            self.attach_base(embed_weight, lm_head_weight)

    def attach_base(self, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> None:
        """Point at the base model's (frozen) embedding and lm_head: shared tensors, never copied."""
        V, H = self.config.vocab_size, self.config.hidden_size
        for name, w in (("embedding", embed_weight), ("lm_head", lm_head_weight)):
            if w is None or tuple(w.shape) != (V, H):
                raise EagleConfigError(f"base {name} has shape {None if w is None else tuple(w.shape)}, the draft "
                                       f"needs {(V, H)}: the draft was built for another model")
        # plain attributes, not buffers: .to() on the draft must never copy the base's (V, H) tensors
        self.embed_weight, self.lm_head_weight = embed_weight.detach(), lm_head_weight.detach()

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def new_cache(self, batch: int, max_len: int) -> DraftCache:
        return DraftCache(self.config, batch, max_len, self.fc.weight.device, self.dtype)

    def rope(self, positions: torch.Tensor):
        """(B, T) positions -> cos, sin (B, T, 1, D) in the draft dtype (rotate-half layout)."""
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """(…, 3H) base features -> (…, H)."""
        return self.fc(features.to(self.dtype))

    def layer_qkv(self, h: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor):
        """The decoder layer up to attention: -> q (B, Hq, T, D), k, v (B, Hkv, T, D) with RoPE applied."""
        c, m = self.config, self.midlayer
        B, T, _ = h.shape
        emb = F.embedding(token_ids, self.embed_weight).to(h.dtype)  # (B, T, H)
        x = torch.cat([m.input_layernorm(emb), m.hidden_norm(h)], dim=-1)  # (B, T, 2H)
        a = m.self_attn
        q = a.q_proj(x).view(B, T, c.num_attention_heads, c.head_dim)
        k = a.k_proj(x).view(B, T, c.num_key_value_heads, c.head_dim)
        v = a.v_proj(x).view(B, T, c.num_key_value_heads, c.head_dim)
        cos, sin = self.rope(positions)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def layer_out(self, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn (B, Hq, T, D) -> the layer's pre-norm output (B, T, H); ``h`` is the residual."""
        B, _, T, _ = attn.shape
        m = self.midlayer
        x = h + m.self_attn.o_proj(attn.transpose(1, 2).reshape(B, T, -1))
        return x + m.mlp(m.post_attention_layernorm(x))

    def logits(self, h_out: torch.Tensor) -> torch.Tensor:
        """Pre-norm layer output (…, H) -> logits (…, V) through the base's lm_head."""
        # without autograd (decoding) the norm skips its two casts: the same values, two launches fewer
        x = self.norm(h_out) if torch.is_grad_enabled() else _norm(h_out, self.norm.weight, self.config.rms_norm_eps)
        return F.linear(x, _as(self.lm_head_weight, x))

    def forward(self, hidden, token_ids, positions, cache: DraftCache, write_slots, mask):
        if self.embed_weight is None:
            raise EagleConfigError("the draft has no base embedding / lm_head: call attach_base(...) first")
        if not torch.is_grad_enabled():
            return self._decode(hidden, token_ids, positions, cache, write_slots, mask)
        h = self.fuse(hidden) if hidden.shape[-1] == 3 * self.config.hidden_size else hidden.to(self.dtype)
        q, k, v = self.layer_qkv(h, token_ids, positions)
        B = q.shape[0]
        rows = torch.arange(B, device=q.device)[:, None]  # (B, 1)
        cache.k[rows, :, write_slots] = k.transpose(1, 2)  # indexed view is (B, T, Hkv, D)
        cache.v[rows, :, write_slots] = v.transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, cache.k[:B], cache.v[:B], attn_mask=mask, enable_gqa=True)
        h_out = self.layer_out(h, attn)
        return self.logits(h_out), h_out

    # -- the decoding path (no grad): the same layer in about half the kernels -----------------------
    def _fused(self, min_positions: int) -> SimpleNamespace:
        """Decode-time constants, built once per weights/device/dtype (host-side check, no device op):
        q|k|v and gate|up weights concatenated (one matmul each) with the preceding norms' weights folded
        in, and a RoPE cos/sin table indexed by position (the same fp32 products and cos/sin as ``rope``,
        so the same values)."""
        m = self.midlayer
        ws = (m.self_attn.q_proj.weight, m.self_attn.k_proj.weight, m.self_attn.v_proj.weight,
              m.mlp.gate_proj.weight, m.mlp.up_proj.weight, m.input_layernorm.weight, m.hidden_norm.weight,
              m.post_attention_layernorm.weight)
        key = tuple((w.data_ptr(), w._version, w.dtype) for w in ws)
        f = getattr(self, "_fused_cache", None)
        if f is None or f.key != key or f.rope.shape[0] < min_positions:
            n = max(min_positions, self.config.max_position_embeddings, 1 if f is None else f.rope.shape[0])
            dev = ws[0].device
            freqs = torch.arange(n, device=dev).float()[:, None] * self.inv_freq.to(dev)  # (n, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            # a norm's weight scales the next matmul's input columns: folded into that matmul's weight
            # (in fp32, rounded once), one launch fewer per norm
            wn = torch.cat(ws[5:7]).float()  # (2H,) input_layernorm | hidden_norm
            f = SimpleNamespace(key=key, wqkv=(torch.cat(ws[:3]).float() * wn).to(self.dtype),
                                w13=(torch.cat(ws[3:5]).float() * ws[7].float()).to(self.dtype),
                                # rotate_half(x) * sin == [x_hi, x_lo] * [-sin_lo, sin_hi] (negation is exact)
                                rope=torch.stack([emb.cos(), torch.cat((-freqs.sin(), freqs.sin()), -1)], 1
                                                 ).to(self.dtype))  # (n, 2, D)
            self._fused_cache = f
        return f

    def _decode(self, hidden, token_ids, positions, cache: DraftCache, write_slots, mask):
        """``forward`` without autograd: the same math (same norms, RoPE values, attention, MLP) with
        fewer launches -- it runs inside the captured speculative step, where each launch costs a few
        microseconds whatever its size: fused q|k|v and gate|up matmuls with the norm weights folded in,
        one RMSNorm over the stacked [embedding; features], RoPE on q and k at once from a table, GQA
        folded into the query axis (SDPA with a mask and ``enable_gqa`` falls back to the unfused math
        path on CUDA). ``mask`` (B, 1, T, S) or already folded (B, 1, G*T, S). Numerics: norms in fp32
        as ``forward``; the folded weights round once (w * W) where ``forward`` rounds the normed
        activation twice, so at least as accurate."""
        c, m = self.config, self.midlayer
        f = self._fused(cache.max_len)
        h = self.fuse(hidden) if hidden.shape[-1] == 3 * c.hidden_size else hidden.to(self.dtype)
        B, T, H = h.shape
        Hq, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        emb = F.embedding(token_ids, self.embed_weight).to(h.dtype)  # (B, T, H)
        eh = torch.stack([emb, h], dim=2)  # (B, T, 2, H): both input norms in one (row-wise: the same values)
        # = cat[input_layernorm(emb), hidden_norm(h)] up to the weights (folded into wqkv), no copy
        x = F.rms_norm(eh, (H,), eps=c.rms_norm_eps).view(B, T, 2 * H)
        qkv = F.linear(x, f.wqkv).view(B, T, Hq + 2 * Hkv, D)
        cs = f.rope[positions][:, :, :, None]  # (B, T, 2, 1, D): cos, signed sin
        qk = qkv[:, :, : Hq + Hkv]
        # RoPE on q and k at once; the half swap as one cat (roll would first copy the strided view)
        qk = qk * cs[:, :, 0] + torch.cat((qk[..., D // 2:], qk[..., : D // 2]), -1) * cs[:, :, 1]
        if B == 1:  # the decoding case: no row index to build
            cache.k[0][:, write_slots[0]] = qk[0, :, Hq:].transpose(0, 1)  # (Hkv, T, D)
            cache.v[0][:, write_slots[0]] = qkv[0, :, Hq + Hkv:].transpose(0, 1)
        else:
            rows = torch.arange(B, device=h.device)[:, None]  # (B, 1)
            cache.k[rows, :, write_slots] = qk[:, :, Hq:]  # indexed view is (B, T, Hkv, D)
            cache.v[rows, :, write_slots] = qkv[:, :, Hq + Hkv:]
        G = Hq // Hkv
        qg = qk[:, :, :Hq].transpose(1, 2).reshape(B, Hkv, G * T, D)  # heads sharing a kv head: extra queries
        # (B, 1, G*T, S); a caller may pass it folded already (rows g*T + t)
        mg = mask if G == 1 or mask.shape[2] in (1, G * T) else mask.repeat(1, 1, G, 1)
        attn = F.scaled_dot_product_attention(qg, cache.k[:B], cache.v[:B], attn_mask=mg)
        attn = attn.reshape(B, Hq, T, D).transpose(1, 2).reshape(B, T, Hq * D)
        x = h + m.self_attn.o_proj(attn)
        g, u = F.linear(F.rms_norm(x, (H,), eps=c.rms_norm_eps), f.w13).chunk(2, dim=-1)
        h_out = x + m.mlp.down_proj(F.silu(g) * u)
        return self.logits(h_out), h_out

    def init_weights(self, seed: int = 0, std: float = 0.02) -> "EagleDraft":
        """Deterministic init: normal(std) linears, unit norms; fc starts as the mean of the three features."""
        g = torch.Generator().manual_seed(seed)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.data.copy_(torch.randn(mod.weight.shape, generator=g) * std)
            elif isinstance(mod, _RMSNorm):
                mod.weight.data.fill_(1.0)
        H = self.config.hidden_size
        eye = torch.eye(H) / 3
        self.fc.weight.data.copy_(torch.cat([eye, eye, eye], dim=1) + torch.randn(H, 3 * H, generator=g) * std / 4)
        self.midlayer.self_attn.o_proj.weight.data.mul_(1 / math.sqrt(2))
        return self


def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """``_RMSNorm`` without its two casts: F.rms_norm computes its statistics in fp32 for bf16/fp16 input
    (one fused kernel on CUDA; runtime/model.py's ``_rms`` relies on the same) and returns x's dtype."""
    return w * F.rms_norm(x, (x.shape[-1],), eps=eps)


def _as(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The shared base weight in x's dtype; under autocast leave it as is (autocast casts once, no fp32 copy)."""
    if w.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return w
    return w.to(x.dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
