"""The ONE place that decides what a prompt's prefill does: dense, or sparse with which patterns.

``plan_prefill(pack, length, device, override)`` -> ``PrefillPlan``. Sparse prefill needs patterns in
the pack and a prompt at least ``sparse_threshold`` tokens long. The threshold is, in order: the
caller's override (``--sparse-min-len``); on CUDA the per-model threshold the pack recorded when it
was measured for that model (``patterns_info["sparse_min_len"]``); else ``DEFAULT_SPARSE_MIN_LEN`` on
CUDA. On a CPU sparse prefill is off unless an override is given: there the kernels' PyTorch
reference is exact but slower than dense attention.

(The transformers-fallback hook in ``kernels/hook.py`` keeps its own ``min_len=4096`` default for
direct library users; the runtime always passes this module's threshold to it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["PrefillPlan", "DENSE", "DEFAULT_SPARSE_MIN_LEN", "DEFAULT_DENSE_ABOVE", "plan_prefill",
           "sparse_threshold", "layer_patterns", "dense_tail_rows"]

# Prompt length from which sparse prefill is used on CUDA. Measured (docs/results.md): on the default
# model sparse prefill loses at every length up to its 8K context (index building's fixed per-layer
# cost dominates 30 small layers), and on a Llama-3-8B-shaped model it first wins end to end at 32K
# (A-shape / block-sparse 1.2x there, 2.6x at 128K). Below this, dense cuDNN attention runs.
DEFAULT_SPARSE_MIN_LEN = 32768
# A layer whose patterns are predicted to keep more than this share of the dense causal work runs
# dense instead: the sparse kernels reach 60-80 % of cuDNN's throughput, so sparse only pays below that.
# The runtime decides this per layer when it plans the prompt, from the patterns' analytic cost
# (``kernels.patterns.predicted_work``), not from the built index's density: reading that back costs a
# host sync per layer, which stops the CPU from queueing the next layer's launches while the GPU runs
# this one (the index path is ~15 launches, ~1 ms of host time per layer, hidden only without syncs).
# Benchmarks that want the measured density pass ``PrefillPlan(dense_above=...)`` themselves.
DEFAULT_DENSE_ABOVE = 0.6


@dataclass(frozen=True)
class PrefillPlan:
    """What one prompt chunk's attention does during prefill. ``patterns``: per layer, one
    ``HeadPattern`` per query head (None = dense)."""

    patterns: list | None = None  # a layer's entry None: that layer runs dense (causal, fresh chunk)
    dense_above: float | None = DEFAULT_DENSE_ABOVE  # runtime density check (a host sync); None: off
    stats: list | None = field(default=None, compare=False)  # sparse layers append what they ran here
    dense_tail: int = 0   # the prompt's last this many rows attend exactly (kernels.dense.dense_tail_sdpa)

    @property
    def sparse(self) -> bool:
        return self.patterns is not None

    def work_share(self, length: int, head_dim: int) -> float | None:
        """Mean share of the dense causal work the patterns keep (None when dense; a dense layer 1.0)."""
        if self.patterns is None:
            return None
        from ..kernels.patterns import layer_work_shares

        sparse = [layer for layer in self.patterns if layer is not None]
        shares = iter(layer_work_shares(sparse, length, head_dim)) if sparse else iter(())
        shares = [1.0 if layer is None else next(shares) for layer in self.patterns]
        return float(sum(shares) / len(shares))


DENSE = PrefillPlan()


def sparse_threshold(pack, device, override: int | None = None) -> int | None:
    """Prompt length from which sparse prefill runs, or None (off)."""
    if override is not None:
        return int(override)
    if torch.device(device).type != "cuda":
        return None
    measured = (getattr(pack, "patterns_info", None) or {}).get("sparse_min_len")
    return int(measured) if measured else DEFAULT_SPARSE_MIN_LEN


def layer_patterns(pack, length: int):
    """The pack's patterns, scaled from the searched length to ``length`` (kernels.scaling)."""
    from ..kernels.scaling import scale_pattern

    info = pack.patterns_info or {}
    searched = int(info.get("seq_len", length))
    rule = info.get("scaling", "proportional")
    layers = [pack.layer_patterns(i) for i in range(len(pack.patterns))]
    if searched == length:
        return layers
    return [[scale_pattern(p, searched, length, rule=rule) for p in layer] for layer in layers]


def plan_prefill(pack, length: int, device, override: int | None = None, *, dense: bool = False) -> PrefillPlan:
    """Dense or sparse prefill for one prompt of ``length`` tokens (see the module docstring)."""
    if dense or pack is None or not pack.has_patterns:
        return DENSE
    threshold = sparse_threshold(pack, device, override)
    if threshold is None or length < threshold:
        return DENSE
    from ..kernels.patterns import layer_work_shares

    scaled = layer_patterns(pack, length)
    layers = [None if share > DEFAULT_DENSE_ABOVE else layer   # priced at once: on every request's path
              for layer, share in zip(scaled, layer_work_shares(scaled, length))]
    if all(layer is None for layer in layers):
        return DENSE
    # decided here, per layer: no sync while it runs; the pack may ask for its prompts' last rows exact
    return PrefillPlan(layers, dense_above=None, dense_tail=dense_tail_rows(pack))


def dense_tail_rows(pack) -> int:
    """How many final prompt rows run exact attention under this pack's patterns (0: none), recorded in
    the pack by ``search-patterns --dense-tail`` (``patterns_info["dense_tail"]``)."""
    return int((getattr(pack, "patterns_info", None) or {}).get("dense_tail", 0) or 0)
