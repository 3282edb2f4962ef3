"""The drafter protocol: what speculative decoding needs from a draft model.

A drafter proposes a tree of candidate tokens after the base model's next token; the engine verifies
the tree in one forward (``runtime.verify``, shared by all drafters) and accepts a path. Per request:

    set_prompt(prompt_ids)               the prompt's token ids, before the prefill (no-op unless the
                                         drafter re-runs them)
    begin(prompt_feats)                  after prefill: the prompt's features (F, L, H); prime own cache
    tokens = propose(root, feats)        root (1,) + features (F, 1, H) of the last accepted token
                                         -> tree tokens (N+1,) for ``self.tree`` (may be a NEW tree
                                         every step unless ``fixed_tree``)
    accept(feats, nodes, n)              after each verify: features (F, N+1, H) of the tree, the
                                         accepted path's node ids (D+1,) and its length (1,); a
                                         drafter with its own KV cache rolls it back to that path
    reset()                              before a new request
    reserve(max_len) -> bool             before a request: size own static buffers for a base cache of
                                         max_len slots; True when they were reallocated (a captured
                                         step aliasing the old ones is then dropped)

``feature_layers``: which hidden states the drafter consumes (layer indices; -1 = the final-norm
output); the model returns exactly those. Everything above runs on the device without host syncs,
so with ``fixed_tree`` (the tree's tensors are static buffers; their contents may change every step,
as EAGLE's dynamic tree does) the whole greedy step (verify, acceptance, drafting) is one CUDA graph.

Pack side: ``validate_config`` checks a config dict with bounds BEFORE anything is sized from it,
``expected_tensors`` gives the tensor names and shapes a pack must hold, ``from_pack`` loads, and
``to_pack`` returns (config, tensors) to save. Register a new kind in ``drafters/__init__.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..tree import TreeBuffers

__all__ = ["Drafter"]


class Drafter:
    kind: ClassVar[str] = ""
    feature_layers: tuple[int, ...] = (-1,)
    fixed_tree: bool = True
    tree: TreeBuffers

    # -- decoding --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the previous request (own KV cache, counters)."""

    def reserve(self, max_len: int) -> bool:
        """Size the drafter's own static buffers (KV cache) for ``max_len`` positions, between requests
        only. -> True when reallocated (default: no buffers of its own)."""
        return False

    def set_prompt(self, prompt_ids: list[int]) -> None:
        """The request's prompt token ids, before ``begin`` (for drafters that re-run the prompt, as
        EAGLE does; a separate hook so ``begin``'s signature stays the same for existing drafters)."""

    def begin(self, prompt_feats: torch.Tensor) -> None:
        """Consume the prompt's features (F, L, H) after prefill."""

    def propose(self, root: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def accept(self, feats: torch.Tensor, nodes: torch.Tensor, n: torch.Tensor) -> None:
        """Keep the drafter's own state for the accepted path only (no-op without own KV cache)."""

    def bounds(self) -> tuple[int, int]:
        """(max tree depth, max tree nodes incl. the root) over all trees it may propose: the cache is
        sized from these. Default: the current tree's."""
        return self.tree.num_heads, self.tree.num_nodes

    def cache_key(self) -> tuple:
        """Drafters with equal keys may share a captured step (default: only this object)."""
        return (self.kind, id(self))

    # -- pack ------------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict) -> dict:
        raise NotImplementedError

    @classmethod
    def expected_tensors(cls, config: dict) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    @classmethod
    def from_pack(cls, pack, model, tree=None) -> "Drafter":
        raise NotImplementedError

    def to_pack(self) -> tuple[dict, dict[str, torch.Tensor]]:
        raise NotImplementedError
