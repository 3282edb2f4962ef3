"""The compact engine behind ``Generator`` for Llama-family models.

Builds ``CompactLM`` once from the loaded transformers model, wires the pack's patterns into its
prefill (scaled to each prompt's length, used only at or above ``sparse_min_len``) and its heads into
Medusa decoding. Plain decoding runs the whole prompt file as one batch; Medusa one prompt at a time.

Sparse prefill runs where the Triton kernels run (CUDA) and only for prompts long enough to gain; the
default threshold comes from ``accel bench prefill`` on the default model (see docs/results.md). On
the CPU the kernels' PyTorch reference is exact but slower than dense attention, so sparse prefill is
off there unless a threshold is given explicitly (tests do).
"""

from __future__ import annotations

import statistics

import torch

__all__ = ["run", "DEFAULT_SPARSE_MIN_LEN"]

# Prompt length from which sparse prefill is used on CUDA. Measured (docs/results.md): on the default
# model sparse prefill loses at every length up to its 8K context (index building's fixed per-layer
# cost dominates 30 small layers), and on a Llama-3-8B-shaped model it first wins end to end at 32K
# (A-shape / block-sparse 1.2x there, 2.6x at 128K). Below this, dense cuDNN attention runs.
DEFAULT_SPARSE_MIN_LEN = 32768


def _compact(gen):
    if gen._compact is None:
        from .llama import CompactLM

        gen._compact = CompactLM.from_hf(gen.loaded.model)
    return gen._compact


def load_heads(pack, compact):
    """The pack's Medusa heads on the compact model's device and dtype, and its tree (or None)."""
    from .drafters.medusa_heads import MedusaConfig, MedusaHeads

    cfg = MedusaConfig.from_dict(pack.medusa)
    heads = MedusaHeads(cfg, lm_head_weight=compact.output.weight if cfg.projection == "shared" else None)
    heads.load_state_dict(pack.heads, strict=True)
    heads = heads.to(device=compact.device, dtype=compact.dtype).eval().requires_grad_(False)
    heads.attach_lm_head(compact.output.weight)  # .to() may have copied the shared lm_head
    tree = pack.medusa.get("tree")
    return heads, ([tuple(p) for p in tree] if tree else None)


def _heads(gen, compact):
    if gen._heads is None:
        gen._heads = load_heads(gen.pack, compact)
    return gen._heads


def sparse_min_len(gen, device: torch.device) -> int | None:
    if gen.config.sparse_min_len is not None:
        return gen.config.sparse_min_len
    return DEFAULT_SPARSE_MIN_LEN if device.type == "cuda" else None


def layer_patterns(pack, length: int):
    """The pack's patterns, scaled from the searched length to ``length`` (search.scale_pattern)."""
    from ..kernels.scaling import scale_pattern

    info = pack.patterns_info or {}
    searched = int(info.get("seq_len", length))
    rule = info.get("scaling", "proportional")
    layers = [pack.layer_patterns(i) for i in range(len(pack.patterns))]
    if searched == length:
        return layers
    return [[scale_pattern(p, searched, length, rule=rule) for p in layer] for layer in layers]


def _work_share(patterns, n: int, d: int) -> float:
    from ..kernels import HeadPattern, pattern_cost

    dense = pattern_cost(HeadPattern("dense", 0, 0, 0.0), n, d)
    return float(statistics.mean(pattern_cost(p, n, d) / dense for layer in patterns for p in layer))


@torch.no_grad()
def run(gen, ids: list[list[int]]) -> list[dict]:
    from .decode import generate_plain
    from .medusa import generate_medusa

    c = gen.config
    compact = _compact(gen)
    eos = gen.loaded.eos_ids
    threshold = sparse_min_len(gen, compact.device) if gen.use_sparse else None

    def set_patterns(length: int) -> float | None:
        if threshold is None or length < threshold:
            compact.patterns = None
            return None
        compact.patterns = layer_patterns(gen.pack, length)
        compact.sparse_min_len = threshold
        return _work_share(compact.patterns, length, compact.head_dim)

    outs = []
    if gen.use_medusa:
        heads, pack_tree = _heads(gen, compact)
        tree = gen.tree or pack_tree
        acceptance = "greedy" if c.temperature == 0 else c.acceptance
        for x in ids:
            work = set_patterns(len(x))
            r = generate_medusa(compact, heads, x, c.max_new_tokens, tree=tree, temperature=c.temperature,
                                top_p=c.top_p, seed=c.seed, eos_ids=eos, acceptance=acceptance, compile=c.compile)
            outs.append((r, work))
    else:
        # one batch; sparse prefill needs an unpadded prompt, so it applies when all lengths agree
        work = set_patterns(len(ids[0])) if len({len(x) for x in ids}) == 1 else set_patterns(0)
        for r in generate_plain(compact, ids, c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                                seed=c.seed, eos_ids=eos, compile=c.compile):
            outs.append((r, work))
    compact.patterns = None
    from .decode import resolve_mode

    mode = resolve_mode(c.compile, compact.device, compact)
    eos_set = set(eos)
    results = []
    for r, work in outs:
        toks = r.tokens[:-1] if r.tokens and r.tokens[-1] in eos_set else r.tokens
        stats = {"engine": "compact+medusa" if gen.use_medusa else "compact", "decode_mode": mode,
                 "prefill_ms": r.prefill_s * 1e3,
                 "tokens_per_s": r.tokens_per_s, "attention_density": work}
        if r.accept_lengths:
            stats["accepted_per_step"] = statistics.mean(r.accept_lengths)
            stats["steps"] = len(r.accept_lengths)
        results.append({"tokens": toks, "stats": stats})
    return results
