"""Compact Llama-family decoder (Llama, Mistral, Qwen2, SmolLM) in the gpt-fast style.

Design points:
- Built from an already loaded transformers model (``CompactLM.from_hf``): q/k/v and gate/up are fused
  into one matmul each (fewer kernels per layer matter at batch 1); every other weight is shared, not
  copied. Dtype and device follow the HF weights.
- Static KV cache as module buffers (``setup_cache``), laid out (B, Hkv, S, D). ``forward`` writes the
  new k/v at ``write_pos`` (the cache *slot*, defaults to ``input_pos``) and attends over the whole
  cache under a boolean mask (B, 1, T, S). Slot and RoPE position are separate so callers can left-pad
  batches (slot != position) and Medusa can write tree nodes at prefix+i with position prefix+depth.
- GQA without repeat copies: for short T (decode / tree verify) the G query heads sharing a kv head
  are folded into the query-length axis, (B, Hkv, G*T, D), so SDPA reads each kv head once; long
  prefills use SDPA's ``enable_gqa``.
- Prefill may use the block-sparse kernel (``accel.kernels.sparse_attention``) per layer when
  ``patterns`` is set, the chunk is long enough and no mask (padding) is given.
- Everything in ``forward`` is free of host syncs and fixed-shape, so a decode step can be captured
  in a CUDA graph.
- ``forward_exact`` is the same model through the batch-invariant kernels (the CUDA default,
  ``--compile exact``): keys are given per query in logical order instead of a mask, and every row's
  arithmetic is independent of the step's row count, so Medusa, plain and batched decoding agree.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CompactLM", "supports"]

_ARCHS = {"llama", "mistral", "qwen2"}
_ROPE_TYPES = {"default", "llama3", "linear"}
_SHORT_T = 64  # up to this many queries, fold GQA groups into the query axis
EXACT_PREFILL_MAX = 8192  # longer single prompts prefill through cuDNN even in exact mode (see forward_exact)


def _rope_params(cfg) -> dict:
    rp = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rp.setdefault("rope_type", rp.get("type", "default"))
    if "rope_theta" not in rp:
        rp["rope_theta"] = getattr(cfg, "rope_theta", 10000.0)
    return rp


def _why_unsupported(hf_model) -> str | None:
    cfg = getattr(hf_model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _ARCHS:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {sorted(_ARCHS)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (only 'silu')"
    if getattr(cfg, "mlp_bias", False):
        return "mlp_bias=True"
    rtype = _rope_params(cfg)["rope_type"]
    if rtype not in _ROPE_TYPES:
        return f"rope type {rtype!r} (supported: {sorted(_ROPE_TYPES)})"
    if not hasattr(getattr(hf_model, "model", None), "layers"):
        return "no .model.layers (expected a *ForCausalLM)"
    return None


def supports(hf_model) -> bool:
    """True if ``CompactLM.from_hf`` can run this transformers model exactly."""
    return _why_unsupported(hf_model) is None


def rope_inv_freq(cfg, head_dim: int) -> torch.Tensor:
    """Inverse frequencies (D/2,) fp32 for the rope types HF may carry ('default', 'linear', 'llama3')."""
    rp = _rope_params(cfg)
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
        f"rope type {rtype!r} is not supported by the compact model (supported: {sorted(_ROPE_TYPES)}); "
        "use the transformers fallback for this model")


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight, self.eps = _param(weight), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rms(x, self.weight, self.eps)


def _rms(x, weight, eps):
    # statistics in fp32, cast back to x's dtype, then the weight: transformers' order. F.rms_norm
    # upcasts internally and is one fused kernel on recent CUDA builds (7 eager kernels otherwise).
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def layer_forward(x, cos, sin, rows, write_pos, mask, kc, vc, attn_norm, wqkv, bqkv, wo, bo, mlp_norm, w13, w2,
                  eps: float, n_head: int, n_kv: int, patterns=None, causal_self: bool = False,
                  dense_above: float | None = 0.6, sparse_stats: list | None = None):
    """One decoder layer as a pure function of its tensors, so one ``torch.compile`` serves all layers.

    x (B, T, H); cos/sin (B, T, 1, D); rows (B, 1); write_pos (B, T); mask (B, 1, G*T, S) when
    T <= _SHORT_T (GQA-folded, see CompactLM.forward) else (B, 1, T, S); kc/vc (B, Hkv, S, D).
    """
    B, T, _ = x.shape
    D = cos.shape[-1]
    qkv = F.linear(_rms(x, attn_norm, eps), wqkv, bqkv)
    qk = qkv[..., : (n_head + n_kv) * D].view(B, T, n_head + n_kv, D)
    qk = qk * cos + _rotate_half(qk) * sin  # RoPE on q and k at once
    q = qk[:, :, :n_head].transpose(1, 2)  # (B, Hq, T, D)
    k = qk[:, :, n_head:]  # (B, T, Hkv, D)
    v = qkv[..., (n_head + n_kv) * D:].view(B, T, n_kv, D)
    # advanced indices around a slice: the indexed view is (B, T, Hkv, D)
    kc[rows, :, write_pos] = k
    vc[rows, :, write_pos] = v
    if patterns is not None:
        from ..kernels import sparse_attention  # lazy: optional Triton dependency
        # prompt chunk at slot 0; an index keeping > dense_above of the work runs dense (faster there)
        y = sparse_attention(q, k.transpose(1, 2), v.transpose(1, 2), patterns, dense_above=dense_above,
                             return_index=sparse_stats is not None)
        if sparse_stats is not None:  # what really ran, for fidelity benchmarks (accel bench quality)
            y, index = y
            ran_dense = dense_above is not None and index.density() > dense_above
            sparse_stats.append({"density": 1.0 if ran_dense else index.density(), "heads": n_head,
                                 "sparse_heads": 0 if ran_dense else int((~index.dense_heads).sum())})
    elif causal_self:  # a prompt chunk at slot 0 sees only itself: causal SDPA (cuDNN), no (T, S) mask
        from ..kernels.attention import dense_causal_sdpa
        y = dense_causal_sdpa(q, k.transpose(1, 2), v.transpose(1, 2))
    elif T <= _SHORT_T:
        G = n_head // n_kv
        qg = q.reshape(B, n_kv, G * T, D)  # heads sharing a kv head become extra queries
        y = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask).reshape(B, n_head, T, D)
    else:
        y = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)
    x = x + F.linear(y.transpose(1, 2).reshape(B, T, n_head * D), wo, bo)
    g, u = F.linear(_rms(x, mlp_norm, eps), w13).chunk(2, dim=-1)
    return x + F.linear(F.silu(g) * u, w2)


def layer_forward_exact(x, pos, rows, write_pos, kv_layout, rope_cos, rope_sin, kc, vc, attn_norm, wqkv, bqkv,
                        wo, bo, mlp_norm, w13, w2, eps: float, n_head: int, n_kv: int):
    """``layer_forward`` through the batch-invariant kernels (accel.kernels.invariant_linear and
    tree_attention): every row's arithmetic is independent of how many rows the step has and of
    where its keys sit in the cache, so decode, Medusa verify and batched steps agree bit for bit.
    x (B, T, H); pos, write_pos (B, T); rows (B, T); kv_layout = (start, n_prefix, n_keys, ancestors)."""
    from ..kernels.invariant_linear import linear, linear_silu_mul, rms_norm
    from ..kernels.tree_attention import rope_write, tree_attention

    B, T, _ = x.shape
    # RMSNorm stays its own launch: fused into the linear (each program recomputing its rows' norms)
    # it cost the Llama-3-8B shape 11 % of its decode speed on the H200 and gained SmolLM2 nothing
    qkv = linear(rms_norm(x, attn_norm, eps), wqkv, bqkv)  # (B, T, (Hq + 2Hkv) * D)
    q = rope_write(qkv, rope_cos, rope_sin, pos, rows, write_pos, kc, vc, n_head, n_kv)  # (B, T, Hq, D)
    y = tree_attention(q, kc, vc, *kv_layout)  # (B, T, Hq, D)
    x = linear(y.reshape(B, T, -1), wo, bo, residual=x)
    return linear(linear_silu_mul(rms_norm(x, mlp_norm, eps), w13), w2, residual=x)


def _linear(weight, bias=None) -> nn.Linear:
    lin = nn.Linear(1, 1, bias=bias is not None, device="meta")
    # detach(): share storage with the HF weights without touching their requires_grad
    lin.weight = weight if _is_ours(weight) else nn.Parameter(weight.detach(), requires_grad=False)
    lin.in_features, lin.out_features = weight.shape[1], weight.shape[0]
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return lin


def _is_ours(t) -> bool:
    return isinstance(t, nn.Parameter) and not t.requires_grad and getattr(t, "_compact", False)


def _param(t: torch.Tensor) -> nn.Parameter:
    p = nn.Parameter(t.detach(), requires_grad=False)
    p._compact = True
    return p


def _fuse(*lins) -> nn.Linear:
    w = torch.cat([l.weight.detach() for l in lins])
    biases = [l.bias for l in lins]
    if all(b is None for b in biases):
        return _linear(w)
    b = torch.cat([(l.bias.detach() if l.bias is not None else l.weight.new_zeros(l.weight.shape[0])) for l in lins])
    return _linear(w, b)


class Attention(nn.Module):
    def __init__(self, hf_attn):
        super().__init__()
        self.wqkv = _fuse(hf_attn.q_proj, hf_attn.k_proj, hf_attn.v_proj)
        self.wo = _linear(hf_attn.o_proj.weight, hf_attn.o_proj.bias)
        self.k_cache: torch.Tensor | None = None  # (B, Hkv, S, D), set by CompactLM.setup_cache
        self.v_cache: torch.Tensor | None = None


class MLP(nn.Module):
    def __init__(self, hf_mlp):
        super().__init__()
        self.w13 = _fuse(hf_mlp.gate_proj, hf_mlp.up_proj)
        self.w2 = _linear(hf_mlp.down_proj.weight)


class Block(nn.Module):
    """Holds one layer's weights under readable names; the math is ``layer_forward``."""

    def __init__(self, hf_layer, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(hf_layer.input_layernorm.weight, cfg.rms_norm_eps)
        self.attn = Attention(hf_layer.self_attn)
        self.mlp_norm = RMSNorm(hf_layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
        self.mlp = MLP(hf_layer.mlp)

    def args(self, B):
        a, m = self.attn, self.mlp
        return (a.k_cache[:B], a.v_cache[:B], self.attn_norm.weight, a.wqkv.weight, a.wqkv.bias, a.wo.weight,
                a.wo.bias, self.mlp_norm.weight, m.w13.weight, m.w2.weight, self.attn_norm.eps)


class CompactLM(nn.Module):
    """``forward(input_ids (B,T), input_pos (B,T), *, mask=None, write_pos=None) -> (logits, hidden)``.

    ``input_pos``: RoPE positions. ``write_pos``: cache slots for the new k/v (default ``input_pos``).
    ``mask``: (B, 1, T, S) bool over cache slots, True = attend; default: causal over slots
    (slot <= write_pos). ``hidden`` is the final-norm output (B, T, H) that Medusa heads consume.
    Call ``setup_cache`` first.
    """

    def __init__(self, hf_model):
        super().__init__()
        why = _why_unsupported(hf_model)
        if why is not None:
            raise ValueError(f"CompactLM cannot run this model: {why}. Use the transformers fallback instead.")
        cfg = hf_model.config
        self.config = cfg
        n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
        self.n_head, self.n_kv, self.head_dim = n_head, n_kv, head_dim
        base = hf_model.model
        self.tok_embeddings = _param(base.embed_tokens.weight)  # (V, H)
        self.layers = nn.ModuleList([Block(l, cfg) for l in base.layers])
        self.norm = RMSNorm(base.norm.weight, cfg.rms_norm_eps)
        tied = hf_model.lm_head.weight is base.embed_tokens.weight
        self.output = _linear(self.tok_embeddings if tied else hf_model.lm_head.weight)  # tied: one Parameter
        self.sliding_window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        self.register_buffer("inv_freq", rope_inv_freq(cfg, head_dim).to(self.output.weight.device), persistent=False)
        self.logits_fp32 = False  # see forward: fp32 vocab projection for tie-robust greedy decoding
        self._w32: torch.Tensor | None = None
        self.patterns: list | None = None  # per layer: list[HeadPattern] for the sparse prefill kernel
        self.sparse_min_len = 1024
        # sparse prefill runs a layer dense when its index keeps more than this share of the work;
        # None forces the sparse kernels (fidelity benchmarks). sparse_stats: a list to append each
        # sparse layer's {"density", "heads", "sparse_heads"} to (None: not collected)
        self.sparse_dense_above: float | None = 0.6
        self.sparse_stats: list | None = None
        self.exact = False  # decode / verify / prefill through forward_exact (set by the generators' callers)
        self.max_batch = self.max_seq_len = 0
        self.kv: torch.Tensor | None = None  # (2, layers, B, Hkv, S, D), set by setup_cache
        self.step_graphs: dict = {}  # decode/verify steps captured by runtime.decode.StepGraph
        self.layer_fn = layer_forward  # swapped for a torch.compile'd copy by ``compiled_layers``
        self._compiled_layer_fn = None

    @classmethod
    def from_hf(cls, hf_model) -> "CompactLM":
        return cls(hf_model).eval()

    @contextlib.contextmanager
    def compiled_layers(self):
        """Within this block, layers run through one ``torch.compile``'d ``layer_forward`` (fused
        elementwise kernels; compiled once per shape, shared by all layers). Used by StepGraph."""
        if self._compiled_layer_fn is None:
            self._compiled_layer_fn = torch.compile(layer_forward, fullgraph=True, dynamic=False)
        old, self.layer_fn = self.layer_fn, self._compiled_layer_fn
        try:
            yield
        finally:
            self.layer_fn = old

    @property
    def device(self):
        return self.output.weight.device

    @property
    def dtype(self):
        return self.output.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.output.weight.shape[0]

    def setup_cache(self, max_batch: int, max_seq_len: int) -> None:
        """(Re)allocate the static KV cache and the RoPE tables; a no-op if it is already big enough."""
        if self.sliding_window is not None and max_seq_len > self.sliding_window:
            raise ValueError(
                f"max_seq_len {max_seq_len} exceeds the model's sliding window {self.sliding_window}; the compact "
                "model has no sliding-window attention: use max_seq_len <= sliding_window or the transformers fallback")
        if max_batch <= self.max_batch and max_seq_len <= self.max_seq_len:
            return
        max_batch, max_seq_len = max(max_batch, self.max_batch), max(max_seq_len, self.max_seq_len)
        max_seq_len = -(-max_seq_len // 64) * 64  # aligned mask rows keep SDPA on its fused kernels
        if self.sliding_window is not None:
            max_seq_len = min(max_seq_len, self.sliding_window)
        shape = (max_batch, self.n_kv, max_seq_len, self.head_dim)  # (B, Hkv, S, D)
        # one allocation for every layer's k and v: (2, layers, B, Hkv, S, D); layers get views, and
        # Medusa's KV move is then one gather + one scatter for all layers instead of 4 per layer
        self.kv = torch.zeros((2, len(self.layers)) + shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.layers):
            layer.attn.k_cache, layer.attn.v_cache = self.kv[0, i], self.kv[1, i]
        pos = torch.arange(max_seq_len, device=self.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D), rotate-half layout
        self.rope_cos, self.rope_sin = emb.cos(), emb.sin()
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.step_graphs = {}  # captured steps point at the old cache tensors: drop them

    def cache_view(self, batch: int):
        """Per-layer (k, v) views of the first ``batch`` rows (for tests / KV surgery)."""
        return [(l.attn.k_cache[:batch], l.attn.v_cache[:batch]) for l in self.layers]

    def copy_kv(self, src: torch.Tensor, dst: torch.Tensor, row: int = 0) -> None:
        """Copy cache slots ``src`` -> ``dst`` (1-D long, device) in every layer for one batch row.

        Gather-then-scatter, so overlapping src/dst ranges are safe. No host sync; two kernels for all
        layers (the caches are views of one tensor, see ``setup_cache``).
        """
        kv = self.kv[:, :, row]  # (2, layers, Hkv, S, D)
        kv[:, :, :, dst] = kv[:, :, :, src]

    @property
    def exact_supported(self) -> str | None:
        """None if ``forward_exact`` can run this model, else why not."""
        from ..kernels.tree_attention import supports_tree_attention
        return supports_tree_attention(self.n_head, self.n_kv, self.head_dim)

    def forward_exact(self, input_ids, input_pos, write_pos, start, n_prefix, n_keys, ancestors=None,
                      last_only: bool = False):
        """``forward`` through the batch-invariant kernels (see ``layer_forward_exact``).

        The keys of query (b, t) are given in logical order instead of a mask: logical position
        j < n_prefix[b] is cache slot start[b] + j, the next ones are ancestors[b, t, :] (tree nodes),
        n_keys[b, t] in all. start, n_prefix (B,); n_keys (B, T); ancestors (B, T, A) or None.
        A single prompt longer than EXACT_PREFILL_MAX, or long enough for the sparse kernels, takes
        ``forward``'s cuDNN / sparse prefill (batch 1, slot 0 by the callers' contract).
        """
        if self.max_seq_len == 0:
            raise RuntimeError("call model.setup_cache(max_batch, max_seq_len) before forward")
        B, T = input_ids.shape
        if B == 1 and (T > EXACT_PREFILL_MAX or (self.patterns is not None and T >= self.sparse_min_len)):
            # a long single prompt at slot 0: cuDNN / sparse prefill (the invariant kernel's small query
            # tiles re-read K/V: 54 vs 20 ms at 8K on SmolLM2, results/prefill-smollm2-exact.json).
            # Medusa and plain share this prefill, so they still agree; only a left-padded batch of
            # such prompts may differ from the prompts run one by one.
            return self.forward(input_ids, input_pos, write_pos=write_pos, last_only=last_only)
        rows = torch.arange(B, device=input_ids.device)[:, None].expand(B, T).contiguous()  # (B, T)
        input_pos, write_pos = input_pos.contiguous(), write_pos.contiguous()
        start, n_prefix, n_keys = start.contiguous(), n_prefix.contiguous(), n_keys.contiguous()
        layout = (start, n_prefix, n_keys, ancestors)
        x = F.embedding(input_ids, self.tok_embeddings)  # (B, T, H)
        for layer in self.layers:
            a, m = layer.attn, layer.mlp
            x = layer_forward_exact(x, input_pos, rows, write_pos, layout, self.rope_cos, self.rope_sin,
                                    a.k_cache, a.v_cache, layer.attn_norm.weight, a.wqkv.weight, a.wqkv.bias,
                                    a.wo.weight, a.wo.bias, layer.mlp_norm.weight, m.w13.weight, m.w2.weight,
                                    layer.attn_norm.eps, self.n_head, self.n_kv)
        from ..kernels.invariant_linear import linear, rms_norm
        hidden = rms_norm(x, self.norm.weight, self.norm.eps)
        h = hidden[:, -1:] if last_only else hidden
        return linear(h, self.output.weight, self.output.bias), hidden

    def forward(self, input_ids, input_pos, *, mask=None, write_pos=None, last_only: bool = False):
        if self.max_seq_len == 0:
            raise RuntimeError("call model.setup_cache(max_batch, max_seq_len) before forward")
        B, T = input_ids.shape
        if B > self.max_batch:
            raise ValueError(f"batch {B} > cache batch {self.max_batch}: call setup_cache with a larger max_batch")
        write_pos = input_pos if write_pos is None else write_pos
        # An unmasked chunk of more than _SHORT_T tokens starting at slot 0 is a prompt prefill: it attends
        # causally to itself only, so no (T, S) mask is built (16 GB of bool at 128K) and SDPA takes its
        # is_causal path (cuDNN). One host read of write_pos; prefill is never graph-captured.
        sparse_ok = self.patterns is not None and T >= self.sparse_min_len
        at_zero = mask is None and (T > _SHORT_T or sparse_ok) and int(write_pos[0, 0]) == 0
        from_zero = at_zero and T > _SHORT_T
        dense_mask = mask
        if from_zero:
            pass
        elif mask is None:
            slots = torch.arange(self.max_seq_len, device=input_ids.device)
            dense_mask = (slots <= write_pos[..., None])[:, None]  # (B, 1, T, S)
        dt = self.dtype
        cos = self.rope_cos[input_pos].to(dt)[:, :, None]  # (B, T, 1, D)
        sin = self.rope_sin[input_pos].to(dt)[:, :, None]
        rows = torch.arange(B, device=input_ids.device)[:, None]  # (B, 1)
        if T <= _SHORT_T:  # fold GQA groups into the query axis once for all layers: (B, 1, G*T, S)
            G = self.n_head // self.n_kv
            dense_mask = dense_mask[:, :, None].expand(B, 1, G, T, dense_mask.shape[-1]).reshape(B, 1, G * T, -1)
        if dense_mask is not None:  # additive mask once per forward: SDPA would convert a bool mask per layer
            dense_mask = torch.full_like(dense_mask, float("-inf"), dtype=dt).masked_fill_(dense_mask, 0.0)
        x = F.embedding(input_ids, self.tok_embeddings)  # (B, T, H)
        # sparse prefill only for an unpadded prompt chunk that starts at slot 0 (the caller's contract)
        sparse = sparse_ok and at_zero
        for i, layer in enumerate(self.layers):
            if sparse:
                x = layer_forward(x, cos, sin, rows, write_pos, dense_mask, *layer.args(B), self.n_head, self.n_kv,
                                  patterns=self.patterns[i], dense_above=self.sparse_dense_above,
                                  sparse_stats=self.sparse_stats)
            elif from_zero:
                x = layer_forward(x, cos, sin, rows, write_pos, None, *layer.args(B), self.n_head, self.n_kv,
                                  causal_self=True)
            else:
                x = self.layer_fn(x, cos, sin, rows, write_pos, dense_mask, *layer.args(B), self.n_head, self.n_kv)
        hidden = self.norm(x)
        h = hidden[:, -1:] if last_only else hidden
        if self.logits_fp32 and self.dtype != torch.float32:
            # bf16 logits tie often (8-bit mantissa); fp32 logits make greedy argmax far less sensitive
            # to the small rounding differences between a 1-token decode step and a 64-node verify step
            if self._w32 is None:
                self._w32 = self.output.weight.float()
            logits = F.linear(h.float(), self._w32)
        else:
            logits = self.output(h)
        return logits, hidden
