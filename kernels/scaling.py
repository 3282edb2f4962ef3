"""How a pattern searched at one prompt length is used at another (the runtime's length rule).

``absolute`` (MInference) keeps the sizes; ``proportional`` (ours, the default) scales what measures a
share of the context so the density the search chose holds at every length.  Which sizes scale and
their floors are each pattern kind's (`Pattern.scale` in `patterns.py`); this module applies the rule
to one pattern or to a whole [layer][head] table.
"""
from __future__ import annotations

from .patterns import SCALING_RULES, HeadPattern

__all__ = ["SCALING_RULES", "scale_pattern", "scale_layers"]


def scale_pattern(pattern, searched_len: int, actual_len: int, rule: str = "proportional") -> HeadPattern:
    """Sizes for a prompt of `actual_len` tokens from a pattern searched at `searched_len`.

    ``absolute`` (MInference): sizes unchanged — cost grows ~linearly with N, density falls.
    ``proportional`` (our default): vertical count v, slash count s, A-shape window and block-sparse
    top-k scale by actual/searched; the A-shape sink stays absolute.  Floors keep the always-needed
    parts: s >= min(s, 100 nearest diagonals), v >= min(v, 30 first keys), window >= min(window, 64),
    top-k >= min(k, 2).
    """
    p = HeadPattern.from_list(pattern)
    return p.kind.scale(p, searched_len, actual_len, rule)


def scale_layers(layers, searched_len: int, actual_len: int, rule: str = "proportional") -> list:
    """`scale_pattern` over [layer][head] (HeadPattern or MInference dicts) -> [layer][head] HeadPattern."""
    out = []
    for layer in layers:
        heads = [layer[k] for k in sorted(layer, key=int)] if isinstance(layer, dict) else list(layer)
        out.append([scale_pattern(p, searched_len, actual_len, rule) for p in heads])
    return out
