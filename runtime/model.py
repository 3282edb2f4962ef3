"""Compact decoder for the families in ``runtime/families`` (Llama, Mistral, Qwen2, Qwen3, SmolLM), gpt-fast style.

Design points:
- Built once from a loaded transformers model (``CompactLM.from_hf``): its family maps the HF
  weights, ``ModelArgs`` (read once from the config) gives the shapes; the model never reads
  ``hf.config`` again. q/k/v and gate/up are fused into one matmul each (fewer kernels per layer
  matter at batch 1); every other weight is shared with HF, not copied.
- ONE forward: ``forward(input_ids, meta, *, backend, last_only, features)``. ``meta`` is an
  ``AttentionMeta`` (positions, cache slots, the key layout per query, the prefill plan). ``backend``
  is "sdpa" (cuBLAS + SDPA/cuDNN + the sparse prefill kernels) or "exact" (the batch-invariant
  kernels of ``kernels.invariant_linear`` / ``kernels.tree_attention``: every row's arithmetic is
  independent of the step's row count and of where its keys sit, so Medusa, plain and batched
  decoding agree bit for bit). The engine fixes the backend once; nothing is written onto the model.
- Static KV cache as one buffer (``setup_cache``), (2, layers, B, Hkv, S, D); layers get views.
- GQA without repeat copies: for short T (decode / tree verify) the G query heads sharing a kv head
  are folded into the query-length axis, (B, Hkv, G*T, D), so SDPA reads each kv head once; long
  prefills use SDPA's ``enable_gqa``.
- A fresh prompt chunk (``meta.fresh``) attends only to itself: the sparse kernels when the plan has
  patterns, causal cuDNN when it is long, never a (T, S) mask. On CUDA its RoPE + KV-cache write,
  RMSNorm weight and SiLU*up run as Triton kernels (``kernels.prefill_elementwise``; see
  ``layer_forward``); every other step (and the CPU) runs the eager ops.
- Everything in ``forward`` is free of host syncs and fixed-shape, so a step can be captured in a
  CUDA graph.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .attention_meta import AttentionMeta
from .families import family_for, rope_inv_freq, why_unsupported

__all__ = ["CompactLM", "supports", "BACKENDS"]

BACKENDS = ("sdpa", "exact")
_SHORT_T = 64  # up to this many queries, fold GQA groups into the query axis
EXACT_PREFILL_MAX = 8192  # longer single prompts prefill through cuDNN even on the exact backend (see forward)
FUSED_PREFILL: str | None = None  # "0" / "1" / "auto" overrides $ACCEL_FUSED_PREFILL (see _fused_fresh)


def supports(hf_model) -> bool:
    """True if ``CompactLM.from_hf`` can run this transformers model exactly."""
    return why_unsupported(hf_model) is None


def _rms(x, weight, eps):
    # statistics in fp32, cast back to x's dtype, then the weight: transformers' order. F.rms_norm
    # upcasts internally and is one fused kernel on recent CUDA builds (7 eager kernels otherwise).
    return weight * F.rms_norm(x, (x.shape[-1],), eps=eps)


def _rms_fresh(x, weight, eps):
    # _rms with the weight multiply as one vectorised Triton pass (the eager broadcast takes PyTorch's
    # slow elementwise path); the same rounding, so the same bits
    if weight.dtype != x.dtype:
        return _rms(x, weight, eps)
    from ..kernels.prefill_elementwise import scale_rows
    return scale_rows(F.rms_norm(x, (x.shape[-1],), eps=eps), weight)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _fused_fresh(x: torch.Tensor, head_dim: int) -> bool:
    """Whether a fresh prompt chunk's layer takes the Triton elementwise kernels
    (``kernels.prefill_elementwise``): on CUDA by default; ``ACCEL_FUSED_PREFILL=0`` turns them off
    (an A/B switch), ``=1`` turns them on anywhere (the CPU tests run them under TRITON_INTERPRET)."""
    mode = FUSED_PREFILL if FUSED_PREFILL is not None else os.environ.get("ACCEL_FUSED_PREFILL", "auto")
    if mode == "0" or not (mode == "1" or x.is_cuda):
        return False
    from ..kernels.prefill_elementwise import supports as fused_supports
    return fused_supports(x.dtype, head_dim)


def layer_forward(x, cos, sin, rows, slots, mask, kc, vc, attn_norm, wqkv, bqkv, wo, bo, mlp_norm, w13, w2,
                  eps: float, q_norm, k_norm, n_head: int, n_kv: int, sparse=None, causal_self: bool = False):
    """One decoder layer on the SDPA backend, as a pure function of its tensors.

    x (B, T, H); cos/sin (B, T, 1, D); rows (B, 1); slots (B, T); mask (B, 1, G*T, S) when
    T <= _SHORT_T (GQA-folded, see CompactLM.forward) else (B, 1, T, S); kc/vc (B, Hkv, S, D).
    ``sparse``: (this layer's patterns, dense_above, stats, dense_tail) for a fresh prompt chunk (dense_tail:
    the last rows computed exactly, see kernels.dense.dense_tail_sdpa); ``stats`` (a list or None) collects
    {"density", "heads", "sparse_heads"} of what really ran (accel bench quality).

    A fresh prompt chunk (``sparse`` or ``causal_self``: attention reads only the chunk's own k/v) on
    CUDA runs RoPE + the cache write, RMSNorm's weight and SiLU*up through Triton
    (``kernels.prefill_elementwise``: at 31K tokens these eager ops cost 32 of 167 ms on the H200);
    the same arithmetic except SiLU's last bit. Decode / verify steps (masked, CUDA-graph captured)
    and the CPU keep the eager ops.
    """
    B, T, _ = x.shape
    D = cos.shape[-1]
    fused = (sparse is not None or causal_self) and _fused_fresh(x, D)
    if fused:
        from ..kernels.prefill_elementwise import rope_qkv, silu_mul
    norm = _rms_fresh if fused else _rms
    qkv = F.linear(norm(x, attn_norm, eps), wqkv, bqkv)
    qk = qkv[..., : (n_head + n_kv) * D].view(B, T, n_head + n_kv, D)
    v = qkv[..., (n_head + n_kv) * D:].view(B, T, n_kv, D)
    if q_norm is not None:  # Qwen3: RMSNorm over head_dim per head, before RoPE
        qk = torch.cat([_rms(qk[:, :, :n_head], q_norm, eps), _rms(qk[:, :, n_head:], k_norm, eps)], dim=2)
    if fused:  # one launch: q (B, Hq, T, D), k/v (B, Hkv, T, D) views, k/v also written to the cache
        q, k, v = rope_qkv(qk, v, cos, sin, rows, slots, kc, vc, n_head)
    else:
        qk = qk * cos + _rotate_half(qk) * sin  # RoPE on q and k at once
        q = qk[:, :, :n_head].transpose(1, 2)  # (B, Hq, T, D)
        k = qk[:, :, n_head:]  # (B, T, Hkv, D)
        # advanced indices around a slice: the indexed view is (B, T, Hkv, D)
        kc[rows, :, slots] = k
        vc[rows, :, slots] = v
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, Hkv, T, D)
    if sparse is not None:
        from ..kernels import sparse_attention  # lazy: optional Triton dependency
        patterns, dense_above, stats, dense_tail = sparse
        y = sparse_attention(q, k, v, patterns, dense_above=dense_above, return_index=stats is not None,
                             dense_tail=dense_tail)
        if stats is not None:
            y, index = y
            ran_dense = dense_above is not None and index.density() > dense_above
            stats.append({"density": 1.0 if ran_dense else index.density(), "heads": n_head,
                          "sparse_heads": 0 if ran_dense else n_head - len(index.dense_head_ids)})
    elif causal_self:  # a fresh prompt chunk sees only itself: causal SDPA (cuDNN), no (T, S) mask
        from ..kernels.dense import dense_causal_sdpa
        y = dense_causal_sdpa(q, k, v)
    elif T <= _SHORT_T:
        G = n_head // n_kv
        qg = q.reshape(B, n_kv, G * T, D)  # heads sharing a kv head become extra queries
        y = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask).reshape(B, n_head, T, D)
    else:
        y = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)
    # fused: y is (B, T, Hq, D) in memory (attention outputs follow q's layout), so this is a view
    x = x + F.linear(y.transpose(1, 2).reshape(B, T, n_head * D), wo, bo)
    gu = F.linear(norm(x, mlp_norm, eps), w13)  # (B, T, 2I): gate | up
    if fused:
        return x + F.linear(silu_mul(gu), w2)
    g, u = gu.chunk(2, dim=-1)
    return x + F.linear(F.silu(g) * u, w2)


def layer_forward_exact(x, pos, rows, slots, layout, rope_cos, rope_sin, kc, vc, attn_norm, wqkv, bqkv,
                        wo, bo, mlp_norm, w13, w2, eps: float, q_norm, k_norm, n_head: int, n_kv: int):
    """``layer_forward`` through the batch-invariant kernels (accel.kernels.invariant_linear and
    tree_attention). x (B, T, H); pos, slots, rows (B, T); layout = (start, n_prefix, n_keys, ancestors)."""
    from ..kernels.invariant_linear import linear, linear_silu_mul, rms_norm
    from ..kernels.tree_attention import rope_write, tree_attention

    B, T, _ = x.shape
    # RMSNorm stays its own launch: fused into the linear (each program recomputing its rows' norms)
    # it cost the Llama-3-8B shape 11 % of its decode speed on the H200 and gained SmolLM2 nothing
    qkv = linear(rms_norm(x, attn_norm, eps), wqkv, bqkv)  # (B, T, (Hq + 2Hkv) * D)
    if q_norm is not None:  # Qwen3: per-head RMSNorm on (rows*heads, D) views, row-wise hence invariant
        D = q_norm.shape[0]
        q = rms_norm(qkv[..., : n_head * D].reshape(-1, D), q_norm, eps).view(B, T, n_head * D)
        k = rms_norm(qkv[..., n_head * D: (n_head + n_kv) * D].reshape(-1, D), k_norm, eps).view(B, T, n_kv * D)
        qkv = torch.cat([q, k, qkv[..., (n_head + n_kv) * D:]], dim=-1)
    q = rope_write(qkv, rope_cos, rope_sin, pos, rows, slots, kc, vc, n_head, n_kv)  # (B, T, Hq, D)
    y = tree_attention(q, kc, vc, *layout)  # (B, T, Hq, D)
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


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    if t is None:
        return None
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


class Block(nn.Module):
    """Holds one layer's weights under readable names; the math is ``layer_forward(_exact)``."""

    def __init__(self, w, eps: float):
        super().__init__()
        self.eps = eps
        self.attn_norm = _param(w.attn_norm)
        self.wqkv = _fuse(w.q, w.k, w.v)
        self.wo = _linear(w.o.weight, w.o.bias)
        self.q_norm, self.k_norm = _param(w.q_norm), _param(w.k_norm)
        self.mlp_norm = _param(w.mlp_norm)
        self.w13 = _fuse(w.gate, w.up)
        self.w2 = _linear(w.down.weight)
        self.k_cache: torch.Tensor | None = None  # (B, Hkv, S, D) views, set by CompactLM.setup_cache
        self.v_cache: torch.Tensor | None = None

    def weights(self):
        return (self.attn_norm, self.wqkv.weight, self.wqkv.bias, self.wo.weight, self.wo.bias, self.mlp_norm,
                self.w13.weight, self.w2.weight, self.eps, self.q_norm, self.k_norm)


class CompactLM(nn.Module):
    """``forward(input_ids (B, T), meta) -> (logits, hidden)``; call ``setup_cache`` first.

    ``meta``: an ``AttentionMeta`` (a (B, T) positions tensor is accepted as shorthand for
    ``AttentionMeta.from_positions``). ``hidden`` is the final-norm output (B, T, H) or, when
    ``features`` names layers, their outputs stacked (F, B, T, H) (-1 = the final-norm output).
    """

    def __init__(self, hf_model):
        super().__init__()
        why = why_unsupported(hf_model)
        if why is not None:
            raise ValueError(f"CompactLM cannot run this model: {why}. Use the transformers fallback instead.")
        family = family_for(hf_model)
        args = family.args(hf_model.config)
        self.family, self.args = family.model_type, args
        self.n_head, self.n_kv, self.head_dim = args.n_head, args.n_kv, args.head_dim
        base = hf_model.model
        self.tok_embeddings = _param(base.embed_tokens.weight)  # (V, H)
        self.layers = nn.ModuleList([Block(family.layer_weights(l, args.qk_norm), args.rms_eps) for l in base.layers])
        self.norm = _param(base.norm.weight)
        tied = hf_model.lm_head.weight is base.embed_tokens.weight
        self.output = _linear(self.tok_embeddings if tied else hf_model.lm_head.weight)  # tied: one Parameter
        self.sliding_window = args.sliding_window
        self.register_buffer("inv_freq", rope_inv_freq(args).to(self.output.weight.device), persistent=False)
        self.max_batch = self.max_seq_len = 0
        self.kv: torch.Tensor | None = None  # (2, layers, B, Hkv, S, D), set by setup_cache
        self.step_graphs: dict = {}  # captured steps (runtime.decode.StepGraph); they alias the cache

    @classmethod
    def from_hf(cls, hf_model) -> "CompactLM":
        return cls(hf_model).eval()

    @property
    def device(self):
        return self.output.weight.device

    @property
    def dtype(self):
        return self.output.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.output.weight.shape[0]

    @property
    def exact_supported(self) -> str | None:
        """None if the exact backend can run this model, else why not."""
        from ..kernels.tree_attention import supports_tree_attention
        return supports_tree_attention(self.n_head, self.n_kv, self.head_dim)

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
        # a drafter's KV move is then one gather + one scatter for all layers instead of 4 per layer
        self.kv = torch.zeros((2, len(self.layers)) + shape, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.layers):
            layer.k_cache, layer.v_cache = self.kv[0, i], self.kv[1, i]
        pos = torch.arange(max_seq_len, device=self.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D), rotate-half layout
        self.rope_cos, self.rope_sin = emb.cos(), emb.sin()
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.step_graphs = {}  # captured steps point at the old cache tensors: drop them

    def cache_view(self, batch: int):
        """Per-layer (k, v) views of the first ``batch`` rows (for tests / KV surgery)."""
        return [(l.k_cache[:batch], l.v_cache[:batch]) for l in self.layers]

    def copy_kv(self, src: torch.Tensor, dst: torch.Tensor, row: int = 0) -> None:
        """Copy cache slots ``src`` -> ``dst`` (1-D long, device) in every layer for one batch row.

        Gather-then-scatter, so overlapping src/dst ranges are safe. No host sync; two kernels for all
        layers (the caches are views of one tensor, see ``setup_cache``).
        """
        kv = self.kv[:, :, row]  # (2, layers, Hkv, S, D)
        kv[:, :, :, dst] = kv[:, :, :, src]

    def forward(self, input_ids, meta, *, backend: str = "sdpa", last_only: bool = False, features=None):
        if self.max_seq_len == 0:
            raise RuntimeError("call model.setup_cache(max_batch, max_seq_len) before forward")
        if not isinstance(meta, AttentionMeta):
            meta = AttentionMeta.from_positions(meta)
        B, T = input_ids.shape
        if meta.row0 + B > self.max_batch:
            raise ValueError(f"rows {meta.row0}..{meta.row0 + B - 1} exceed the cache batch {self.max_batch}: "
                             "call setup_cache with a larger max_batch")
        if backend == "exact":
            # a long single prompt: cuDNN / sparse prefill (the invariant kernel's small query tiles
            # re-read K/V: 54 vs 20 ms at 8K on SmolLM2, results/prefill-smollm2-exact.json). Medusa
            # and plain prefill every prompt alone, so they share this path and still agree.
            if not (B == 1 and meta.fresh and (T > EXACT_PREFILL_MAX or meta.prefill.sparse)):
                x = self._layers_exact(input_ids, meta, features)
                return self._head_exact(x, last_only, features)
        elif backend != "sdpa":
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        x = self._layers_sdpa(input_ids, meta, features)
        return self._head(x, last_only, features)

    # -- the two backends ---------------------------------------------------------------------------
    def _layers_sdpa(self, input_ids, meta: AttentionMeta, features):
        B, T = input_ids.shape
        sparse = meta.fresh and meta.prefill.sparse
        causal_self = meta.fresh and T > _SHORT_T
        mask = None
        if not (sparse or causal_self):
            mask = meta.dense_mask(self.max_seq_len)  # (B, 1, T, S)
            if T <= _SHORT_T:  # fold GQA groups into the query axis once for all layers: (B, 1, G*T, S)
                G = self.n_head // self.n_kv
                mask = mask[:, :, None].expand(B, 1, G, T, mask.shape[-1]).reshape(B, 1, G * T, -1)
            # additive mask once per forward: SDPA would convert a bool mask per layer
            mask = torch.full_like(mask, float("-inf"), dtype=self.dtype).masked_fill_(mask, 0.0)
        dt = self.dtype
        cos = self.rope_cos[meta.pos].to(dt)[:, :, None]  # (B, T, 1, D)
        sin = self.rope_sin[meta.pos].to(dt)[:, :, None]
        rows = torch.arange(B, device=input_ids.device)[:, None]  # (B, 1) within the cache rows row0..
        r0 = meta.row0
        x = F.embedding(input_ids, self.tok_embeddings)  # (B, T, H)
        feats = {}
        for i, layer in enumerate(self.layers):
            pats = meta.prefill.patterns[i] if sparse else None
            plan = ((pats, meta.prefill.dense_above, meta.prefill.stats, meta.prefill.dense_tail)
                    if pats is not None else None)
            if sparse and pats is None and meta.prefill.stats is not None:  # a layer planned dense
                meta.prefill.stats.append({"density": 1.0, "heads": self.n_head, "sparse_heads": 0})
            # a sparse plan's dense layer (planned so: see runtime.prefill) sees only its fresh chunk
            x = layer_forward(x, cos, sin, rows, meta.slots, mask, layer.k_cache[r0:r0 + B],
                              layer.v_cache[r0:r0 + B], *layer.weights(), self.n_head, self.n_kv,
                              sparse=plan, causal_self=(causal_self and not sparse) or (sparse and pats is None))
            if features is not None and i in features:
                feats[i] = x
        return x, feats

    def _layers_exact(self, input_ids, meta: AttentionMeta, features):
        B, T = input_ids.shape
        rows = torch.arange(B, device=input_ids.device)[:, None].expand(B, T).contiguous()  # (B, T)
        layout = (meta.start.contiguous(), meta.n_prefix.contiguous(), meta.n_keys.contiguous(), meta.ancestors)
        pos, slots, r0 = meta.pos.contiguous(), meta.slots.contiguous(), meta.row0
        x = F.embedding(input_ids, self.tok_embeddings)  # (B, T, H)
        feats = {}
        for i, layer in enumerate(self.layers):
            x = layer_forward_exact(x, pos, rows, slots, layout, self.rope_cos, self.rope_sin,
                                    layer.k_cache[r0:r0 + B], layer.v_cache[r0:r0 + B], *layer.weights(),
                                    self.n_head, self.n_kv)
            if features is not None and i in features:
                feats[i] = x
        return x, feats

    def _head(self, x_feats, last_only, features):
        x, feats = x_feats
        hidden = _rms(x, self.norm, self.args.rms_eps)
        h = hidden[:, -1:] if last_only else hidden
        return self.output(h), _features(hidden, feats, features)

    def _head_exact(self, x_feats, last_only, features):
        from ..kernels.invariant_linear import linear, rms_norm

        x, feats = x_feats
        hidden = rms_norm(x, self.norm, self.args.rms_eps)
        h = hidden[:, -1:] if last_only else hidden
        return linear(h, self.output.weight, self.output.bias), _features(hidden, feats, features)


def _features(hidden, feats, features):
    """The final-norm output, or the requested layers' outputs stacked (F, B, T, H)."""
    if features is None:
        return hidden
    return torch.stack([hidden if i == -1 else feats[i] for i in features])
