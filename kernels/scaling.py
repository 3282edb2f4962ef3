"""How a pattern searched at one prompt length is used at another (the runtime's length rule).

``absolute`` (MInference) keeps the sizes; ``proportional`` (ours, the default) scales what measures a
share of the context so the density the search chose holds at every length.
"""
from __future__ import annotations

from .index import SLASH_KEEP, VERTICAL_KEEP
from .patterns import HeadPattern

__all__ = ["SCALING_RULES", "scale_pattern", "scale_layers"]

SCALING_RULES = ("proportional", "absolute")


def scale_pattern(pattern, searched_len: int, actual_len: int, rule: str = "proportional") -> HeadPattern:
    """Sizes for a prompt of `actual_len` tokens from a pattern searched at `searched_len`.

    ``absolute`` (MInference): sizes unchanged — cost grows ~linearly with N, density falls.
    ``proportional`` (our default): sizes that measure a share of the context scale with N, so the
    density (and roughly the speed-up) stays what the search chose: vertical count v, slash count s,
    A-shape window and block-sparse top-k scale by actual/searched; the A-shape sink stays absolute
    (sinks are the first tokens whatever the length).  Floors keep the always-needed parts: s >=
    min(s, 100 nearest diagonals), v >= min(v, 30 first keys), window >= min(window, 64), top-k >= min(k, 2).
    """
    p = HeadPattern.from_list(pattern)
    if rule not in SCALING_RULES:
        raise ValueError(f"scaling rule {rule!r} unknown: use one of {SCALING_RULES}")
    if rule == "absolute" or p.name == "dense" or searched_len == actual_len:
        return HeadPattern(p.name, p.size_1, p.size_2, p.score)
    if searched_len <= 0 or actual_len <= 0:
        raise ValueError("searched_len and actual_len must be positive")
    f = actual_len / searched_len
    sc = lambda x, floor: max(min(x, floor), int(round(x * f)))
    if p.name == "stream_llm":
        return HeadPattern(p.name, p.size_1, sc(p.size_2, 64), p.score)
    if p.name == "vertical_and_slash":
        return HeadPattern(p.name, sc(p.size_1, VERTICAL_KEEP), max(1, sc(p.size_2, SLASH_KEEP)), p.score)
    return HeadPattern(p.name, max(1, sc(p.size_1, 2)), p.size_2, p.score)           # block_sparse


def scale_layers(layers, searched_len: int, actual_len: int, rule: str = "proportional") -> list:
    """`scale_pattern` over [layer][head] (HeadPattern or MInference dicts) -> [layer][head] HeadPattern."""
    out = []
    for layer in layers:
        heads = [layer[k] for k in sorted(layer, key=int)] if isinstance(layer, dict) else list(layer)
        out.append([scale_pattern(p, searched_len, actual_len, rule) for p in heads])
    return out
