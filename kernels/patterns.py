"""Per-head sparse-prefill patterns (MInference vocabulary).

A layer's prefill is described by one `HeadPattern` per query head.  The names and the meaning of
`size_1` / `size_2` follow MInference's saved config so that its JSON (one list entry per layer,
``{"<head>": [name, size_1, size_2, score]}``) round-trips through `from_minference` / `to_minference`:

=====================  ==========================  ===============================
name                   size_1                      size_2
=====================  ==========================  ===============================
``vertical_and_slash`` v: kept key columns          s: kept diagonals ("slashes")
``stream_llm``         sink: first keys kept        local window (keys) per query
``block_sparse``       top-k key blocks per q-block unused (0)
``dense``              unused (0)                   unused (0)
=====================  ==========================  ===============================
"""
from __future__ import annotations

from dataclasses import dataclass

PATTERN_NAMES = ("vertical_and_slash", "stream_llm", "block_sparse", "dense")

# MInference / peers spell some of these differently; accept them on input.
_ALIASES = {
    "a_shape": "stream_llm",
    "ashape": "stream_llm",
    "streaming": "stream_llm",
    "vertical_slash": "vertical_and_slash",
    "vs": "vertical_and_slash",
    "blocksparse": "block_sparse",
    "full": "dense",
}


@dataclass
class HeadPattern:
    """One query head's prefill pattern; see the module docstring for `size_1` / `size_2`."""

    name: str
    size_1: int = 0
    size_2: int = 0
    score: float = 0.0

    def __post_init__(self):
        self.name = _ALIASES.get(str(self.name).lower(), str(self.name).lower())
        if self.name not in PATTERN_NAMES:
            raise ValueError(
                f"unknown pattern {self.name!r}; expected one of {PATTERN_NAMES} "
                f"(aliases: {sorted(_ALIASES)})"
            )
        for field in ("size_1", "size_2"):
            val = getattr(self, field)
            if isinstance(val, float) and not val.is_integer():
                raise ValueError(f"{self.name}: {field} must be an integer number of tokens/blocks, got {val}")
            val = int(val)
            if val < 0:
                raise ValueError(f"{self.name}: {field} must be >= 0, got {val}")
            setattr(self, field, val)
        self.score = float(self.score)
        if self.name == "vertical_and_slash" and self.size_1 + self.size_2 == 0:
            raise ValueError("vertical_and_slash needs v (size_1) + s (size_2) > 0; use 'dense' or a real budget")
        if self.name == "vertical_and_slash" and self.size_2 < 1:
            raise ValueError("vertical_and_slash needs s (size_2) >= 1: the main diagonal is always kept")
        if self.name == "stream_llm" and self.size_2 < 1:
            raise ValueError("stream_llm needs a local window (size_2) >= 1 so each query sees itself")
        if self.name == "block_sparse" and self.size_1 < 1:
            raise ValueError("block_sparse needs top-k (size_1) >= 1: the diagonal block is always kept")

    # ---- MInference exchange format -------------------------------------------------------
    def to_list(self) -> list:
        return [self.name, self.size_1, self.size_2, self.score]

    @classmethod
    def from_list(cls, entry) -> "HeadPattern":
        if isinstance(entry, HeadPattern):
            return entry
        if isinstance(entry, dict):
            return cls(**entry)
        entry = list(entry)
        if not 1 <= len(entry) <= 4:
            raise ValueError(f"pattern entry must be [name, size_1, size_2, score], got {entry!r}")
        return cls(*entry)


def from_minference(config) -> list[list[HeadPattern]]:
    """MInference config (list over layers of ``{"head": [name, s1, s2, score]}``) -> per-layer head lists.

    Heads are ordered by their integer key; a missing head is an error (every query head needs a pattern).
    """
    if isinstance(config, dict):  # a single layer
        config = [config]
    layers = []
    for li, layer in enumerate(config):
        if isinstance(layer, dict):
            keys = sorted(layer, key=lambda k: int(k))
            if [int(k) for k in keys] != list(range(len(keys))):
                raise ValueError(f"layer {li}: head keys must be 0..H-1, got {keys}")
            layers.append([HeadPattern.from_list(layer[k]) for k in keys])
        else:
            layers.append([HeadPattern.from_list(e) for e in layer])
    return layers


def to_minference(layers) -> list[dict]:
    """Per-layer head lists -> MInference config (JSON-serialisable)."""
    return [{str(h): p.to_list() for h, p in enumerate(layer)} for layer in layers]
