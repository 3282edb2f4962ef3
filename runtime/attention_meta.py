"""``AttentionMeta``: everything a forward needs to know about attention, in ONE object.

In the spirit of FlexAttention's single mask object, a forward takes token ids and one of these:

- ``pos`` (B, T): RoPE positions; ``slots`` (B, T): cache slots the new k/v are written to (slot and
  position differ for tree nodes); ``row0``: the first cache row of the batch (a prompt of a batch
  is prefilled alone into its own row).
- the key layout per query, in logical order: positions j < n_prefix[b] are the contiguous slots
  start[b] + j; the next ones are ``ancestors[b, t, :]`` (tree nodes); ``n_keys[b, t]`` in all.
  The batch-invariant kernels read this directly; the SDPA path derives its boolean mask from it
  (``dense_mask``).
- ``fresh``: the chunk is a whole prompt with nothing before it in the cache, so it attends only to
  itself: long chunks take causal cuDNN / the sparse kernels without any (T, S) mask.
- ``prefill``: the ``PrefillPlan`` (dense or sparse patterns + ``dense_above``) for a fresh chunk.

Which kernels run (batch-invariant "exact" or SDPA) is not in here: the engine fixes it once.
All constructors are free of host syncs, so decode and verify steps can be captured in CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .prefill import DENSE, PrefillPlan

__all__ = ["AttentionMeta"]


@dataclass
class AttentionMeta:
    pos: torch.Tensor  # (B, T) RoPE positions
    slots: torch.Tensor  # (B, T) cache slots written
    start: torch.Tensor  # (B,) slot of logical key 0
    n_prefix: torch.Tensor  # (B,) contiguous keys from start
    n_keys: torch.Tensor  # (B, T) keys of each query
    ancestors: torch.Tensor | None = None  # (B, T, A) slots of logical keys n_prefix.. (tree nodes)
    fresh: bool = False
    prefill: PrefillPlan = DENSE
    row0: int = 0

    @property
    def shape(self):
        return tuple(self.pos.shape)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def prompt(cls, pos: torch.Tensor, prefill: PrefillPlan = DENSE, row0: int = 0) -> "AttentionMeta":
        """A whole prompt (B, T) at slots 0..T-1, causal over itself."""
        B, T = pos.shape
        z = torch.zeros(B, dtype=torch.long, device=pos.device)
        return cls(pos, pos, z, z + T, pos + 1, fresh=True, prefill=prefill, row0=row0)

    @classmethod
    def from_positions(cls, pos: torch.Tensor) -> "AttentionMeta":
        """Shorthand for tests and scripts: queries at slot == position, causal over slots 0..slot; a
        chunk of more than 64 tokens starting at slot 0 counts as a fresh prompt (one host read)."""
        if pos.shape[1] > 64 and int(pos[0, 0]) == 0:
            return cls.prompt(pos)
        return cls.causal(pos)

    @classmethod
    def causal(cls, pos: torch.Tensor, slots: torch.Tensor | None = None, start: torch.Tensor | None = None
               ) -> "AttentionMeta":
        """Queries (B, T) at ``slots`` (default ``pos``) seeing the contiguous slots start..slot."""
        slots = pos if slots is None else slots
        start = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device) if start is None else start
        n = slots - start[:, None] + 1  # (B, T)
        return cls(pos, slots, start, n.amax(-1) if n.shape[1] > 1 else n[:, 0], n)

    @classmethod
    def tree(cls, prefix: torch.Tensor, depth: torch.Tensor, ancestors: torch.Tensor) -> "AttentionMeta":
        """A token tree of N+1 nodes after a prefix of ``prefix`` (1,) tokens at slots 0..prefix-1:
        node i at slot prefix + i, position prefix + depth[i], keys = prefix, then its ancestors
        (``ancestors`` (N+1, A) node ids root..itself, ``depth`` (N+1,))."""
        n = depth.shape[0]
        ar = torch.arange(n, device=prefix.device)
        return cls((prefix + depth)[None], (prefix + ar)[None], torch.zeros_like(prefix), prefix,
                   (prefix + depth + 1)[None], (prefix + ancestors)[None])

    def with_prefill(self, plan: PrefillPlan) -> "AttentionMeta":
        return replace(self, prefill=plan)

    # -- what the SDPA path needs -----------------------------------------------------------------
    def dense_mask(self, n_slots: int) -> torch.Tensor:
        """(B, 1, T, S) bool over cache slots, True = attend: the layout above as a mask."""
        slots = torch.arange(n_slots, device=self.pos.device)
        rel = slots[None, None, :] - self.start[:, None, None]  # (B, 1, S)
        contiguous = torch.minimum(self.n_prefix[:, None], self.n_keys)[..., None]  # (B, T, 1)
        mask = (rel >= 0) & (rel < contiguous)  # (B, T, S)
        if self.ancestors is not None:
            A = self.ancestors.shape[-1]
            used = torch.arange(A, device=self.pos.device) < (self.n_keys - self.n_prefix[:, None])[..., None]
            # scatter_add, not scatter: padded ancestor entries may repeat a real slot
            hits = torch.zeros(mask.shape, dtype=torch.int32, device=mask.device)
            hits.scatter_add_(2, self.ancestors, used.to(torch.int32))
            mask = mask | (hits > 0)
        return mask[:, None]
