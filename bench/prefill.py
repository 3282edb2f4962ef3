"""``accel bench prefill``: time to first token, dense vs sparse, on the compact engine.

For each length N: one prompt of N tokens (real text for a real model, random ids for a synthetic
one) is prefilled with dense attention (SDPA, cuDNN where available) and with the per-head patterns
(the Triton kernels); both produce the first token's logits. Reported beside the times:

- ``predicted_work``: the share of dense causal attention FLOPs the sparse kernels execute by the
  kernel-aware cost model (block padding included), averaged over heads and layers; and
  ``index_density_random_qk``: the density of the index the online estimation builds for layer 0's
  patterns on random q/k — what a random-weight model produces. Vertical-slash estimation on diffuse
  (random) attention spreads its diagonals over the whole sequence and keeps most of the work;
  A-shape and block-sparse cost what their sizes say on any data;
- ``exact_ms``: the same prefill through the batch-invariant kernels (what ``--compile exact``
  runs, so batched and single-prompt runs agree bit for bit), CUDA only;
- ``sparse_ms`` times the plan the runtime makes for the prompt (planning inside the timed region) and
  ``planned_dense_layers`` counts the layers that plan runs dense (predicted work above
  ``runtime.prefill.DEFAULT_DENSE_ABOVE``);
- ``index_ms``: online index estimation alone (all layers), timed on inputs of the layer shape, and
  its share of the sparse prefill time.
"""

from __future__ import annotations

import torch

from .common import time_ms

__all__ = ["bench_prefill", "uniform_patterns"]


def uniform_patterns(num_layers: int, num_heads: int, name: str = "vertical_and_slash",
                     size_1: int = 1000, size_2: int = 6096):
    """Every head of every layer gets one pattern (MInference's common budget by default)."""
    from ..kernels import HeadPattern

    return [[HeadPattern(name, size_1, size_2, 0.0) for _ in range(num_heads)] for _ in range(num_layers)]


@torch.no_grad()
def bench_prefill(compact, lengths: list[int], patterns_for, *, ids_for=None, plan_for=None, warmup: int = 1,
                  rep: int = 3, progress=None) -> list[dict]:
    """``patterns_for(n)`` -> per-layer head patterns at length n; ``ids_for(n)`` -> (1, n) token ids;
    ``plan_for(n)`` -> the ``PrefillPlan`` the runtime would run (a pack: ``runtime.prefill.plan_prefill``,
    whose per-layer dense fallback is decided at plan time, with no host sync while it runs). It is called
    inside the timed region, so ``sparse_ms`` is what a user's first token waits for: planning included.
    Default (fixed patterns for every head): ``PrefillPlan(patterns_for(n))``, whose density check runs a
    layer dense when its built index keeps > 60 % of the work (random weights make vertical-slash diffuse)."""
    from ..kernels import build_index
    from ..kernels.patterns import predicted_work

    from ..runtime.attention_meta import AttentionMeta
    from ..runtime.prefill import PrefillPlan

    def prefill(ids, pos, backend="sdpa", plan=PrefillPlan()):
        return compact(ids, AttentionMeta.prompt(pos, plan), backend=backend, last_only=True)

    dev = compact.device
    compact.setup_cache(1, max(lengths) + 1)
    rows = []
    for n in lengths:
        ids = ids_for(n) if ids_for else torch.randint(0, compact.vocab_size, (1, n), device=dev)
        pos = torch.arange(n, device=dev)[None]
        dense_ms = time_ms(lambda: prefill(ids, pos), warmup=warmup, rep=rep, device=dev)
        exact_ms = None
        if dev.type == "cuda" and compact.exact_supported is None:  # the batch-invariant kernels' prefill
            exact_ms = time_ms(lambda: prefill(ids, pos, "exact"), warmup=warmup, rep=rep, device=dev)
        pats = patterns_for(n)
        make_plan = plan_for or (lambda n_: PrefillPlan(pats))
        sparse_ms = time_ms(lambda: prefill(ids, pos, plan=make_plan(n)), warmup=warmup, rep=rep, device=dev)
        plan = make_plan(n)
        dense_layers = sum(layer is None for layer in plan.patterns) if plan.sparse else len(pats)
        # index estimation alone, on inputs of one layer's shape (values do not change its cost)
        H, Hkv, D = compact.n_head, compact.n_kv, compact.head_dim
        q = torch.randn(1, H, n, D, device=dev, dtype=compact.dtype)
        k = torch.randn(1, Hkv, n, D, device=dev, dtype=compact.dtype)
        index_ms = sum(time_ms(lambda p=p: build_index(q, k, p), warmup=1, rep=rep, device=dev)
                       for p in pats[:1]) * len(pats)
        density = build_index(q, k, pats[0]).density()  # on random q/k: what random weights produce
        del q, k
        row = dict(length=n, dense_ms=dense_ms, exact_ms=exact_ms, sparse_ms=sparse_ms, speedup=dense_ms / sparse_ms,
                   planned_dense_layers=dense_layers,
                   predicted_work=predicted_work(pats, n, D), index_density_random_qk=density,
                   index_ms=index_ms, index_share=index_ms / sparse_ms)
        rows.append(row)
        if progress:
            progress(row)
    return rows
