"""Medusa sparse candidate trees.

A tree is a list of paths; a path is a tuple of top-k ranks, one per depth: (0,) is head 0's top-1
token, (0, 2) is head 1's rank-2 token placed after it, as in Medusa's ``mc_sim_7b_63``. Node 0 is
the root: the base model's own next token, which is always accepted.

- ``build_tree`` adds nodes greedily by expected acceptance: a path is accepted with probability
  prod_d acc[d, rank_d] (heads treated as independent), and the expected number of accepted
  tokens is the sum of that over the nodes, so taking the highest-value frontier node each time is
  optimal among prefix-closed trees of that size (a child never scores above its parent).
- ``TreeBuffers`` holds the static tensors the verify step needs: which flattened top-k candidate
  each node is (``tree_indices``), the ancestor-only mask, depth (position offset), the candidate
  paths (``retrieve``: one row per leaf) and the children table (speculative sampling).
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

__all__ = ["build_tree", "default_tree", "TreeBuffers"]

_SHARED: dict = {}  # TreeBuffers.shared: (paths, topk, device) -> buffers, least recently used first
_SHARED_MAX = 32

# Vicuna-7B Medusa-1 per-head top-1 accuracies (paper); lower ranks decay geometrically (a guess
# until the heads' own accuracies are measured: pass those to build_tree instead).
_TOP1 = [0.56, 0.32, 0.20, 0.15, 0.12]
_RANK_DECAY = 0.45


def build_tree(head_accuracies, num_nodes: int = 63) -> list[tuple[int, ...]]:
    """(K, topk) per-head, per-rank acceptance probabilities -> list of ``num_nodes`` paths."""
    acc = np.asarray(head_accuracies, dtype=np.float64)
    if acc.ndim != 2 or acc.size == 0:
        raise ValueError(f"head_accuracies must be a (num_heads, topk) array, got shape {acc.shape}")
    K, topk = acc.shape
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    heap: list = []  # (-value, path)

    def push_children(path, value):
        if len(path) < K:
            for r in range(topk):
                heapq.heappush(heap, (-value * acc[len(path), r], path + (r,)))

    push_children((), 1.0)
    paths = []
    while heap and len(paths) < num_nodes:
        neg, path = heapq.heappop(heap)
        paths.append(path)
        push_children(path, -neg)
    return sorted(paths, key=lambda p: (len(p), p))


def default_accuracies(num_heads: int, topk: int = 10) -> np.ndarray:
    top1 = [_TOP1[k] if k < len(_TOP1) else _TOP1[-1] * 0.8 ** (k - len(_TOP1) + 1) for k in range(num_heads)]
    return np.array([[a * _RANK_DECAY ** r for r in range(topk)] for a in top1])


def default_tree(num_heads: int, num_nodes: int = 63) -> list[tuple[int, ...]]:
    """A 63-node tree from Vicuna-like accuracies; rebuild with measured accuracies when you have them."""
    return build_tree(default_accuracies(num_heads), num_nodes)


class TreeBuffers:
    """Static index tensors for one tree (on ``device``). N = len(paths); nodes 0..N, 0 = root.

    - ``tree_indices`` (N+1,): node -> index into ``cat([root_token], topk_tokens.flatten())``
      where topk_tokens is (K, topk) from the heads.
    - ``mask`` (N+1, N+1) bool: node i attends to node j iff j is i's ancestor or itself.
    - ``depth`` (N+1,): RoPE position offset from the root.
    - ``retrieve`` (P, D+1): node ids along each leaf path, padded with 0; ``retrieve_valid`` marks
      the real entries.
    - ``children`` (N+1, C): child node ids in rank order, padded with -1.
    - ``ancestors`` (N+1, D+1): node ids from the root down to the node itself, padded with 0 (the
      exact attention kernel reads a node's keys in this order).
    """

    def __init__(self, paths, topk: int | None = None, device="cpu"):
        paths = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
        if not paths or any(len(p) == 0 for p in paths):
            raise ValueError("a tree needs at least one non-empty path")
        index = {(): 0}
        for i, p in enumerate(paths):
            index[p] = i + 1
        for p in paths:
            if p[:-1] not in index:
                raise ValueError(f"path {p} has no parent {p[:-1]} in the tree: trees must be prefix-closed")
        nodes = [()] + paths
        self.paths, self.num_nodes = paths, len(nodes)
        self.topk = topk or max(max(p) for p in paths) + 1
        self.num_heads = max(len(p) for p in paths)
        if max(max(p) for p in paths) >= self.topk:
            raise ValueError(f"a path uses rank >= topk={self.topk}")
        n = len(nodes)
        tree_idx = [0] + [1 + (len(p) - 1) * self.topk + p[-1] for p in paths]
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(nodes):
            for d in range(len(p) + 1):
                mask[i, index[p[:d]]] = True
        leaves = [p for p in paths if not any(len(q) == len(p) + 1 and q[:-1] == p for q in paths)]
        D = self.num_heads
        retrieve = torch.zeros(len(leaves), D + 1, dtype=torch.long)
        valid = torch.zeros(len(leaves), D + 1, dtype=torch.bool)
        node_path = torch.zeros(n, dtype=torch.long)  # some leaf row that contains the node
        for r, leaf in enumerate(leaves):
            for d in range(len(leaf) + 1):
                retrieve[r, d], valid[r, d] = index[leaf[:d]], True
                node_path[index[leaf[:d]]] = r
        kids = [[index[q] for q in paths if len(q) == len(p) + 1 and q[:-1] == p] for p in nodes]
        C = max(len(k) for k in kids)
        children = torch.full((n, C), -1, dtype=torch.long)
        for i, k in enumerate(kids):
            children[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        ancestors = torch.zeros(n, D + 1, dtype=torch.long)
        for i, p in enumerate(nodes):
            ancestors[i, : len(p) + 1] = torch.tensor([index[p[:d]] for d in range(len(p) + 1)])
        to = dict(device=device)
        self.ancestors = ancestors.to(**to)
        self.tree_indices = torch.tensor(tree_idx, **to)
        self.mask = mask.to(**to)
        self.depth = torch.tensor([len(p) for p in nodes], **to)
        self.retrieve = retrieve.to(**to)
        self.retrieve_valid = valid.to(**to)
        self.node_path = node_path.to(**to)
        self.children = children.to(**to)
        self.children_list = kids  # host copy for the speculative walk

    @classmethod
    def shared(cls, paths, topk: int | None = None, device="cpu") -> "TreeBuffers":
        """The same buffers for the same tree on the same device, built once per process: building
        them is Python loops over the nodes plus one host-to-device copy per tensor (~6 ms on a CPU
        for 63 nodes), which a per-request ``MedusaDrafter(heads, tree)`` used to pay every call.
        Callers must not modify the returned buffers (nothing does: they are read-only indices)."""
        key = (tuple(sorted({tuple(int(r) for r in p) for p in paths})), topk, str(torch.device(device)))
        tb = _SHARED.pop(key, None)
        if tb is None:
            tb = cls(paths, topk, device)
        _SHARED[key] = tb  # most recently used last
        while len(_SHARED) > _SHARED_MAX:
            _SHARED.pop(next(iter(_SHARED)))
        return tb

    def candidates(self, root_token: torch.Tensor, topk_tokens: torch.Tensor) -> torch.Tensor:
        """root (1,) + (K, topk) head tokens -> tree tokens (N+1,)."""
        flat = torch.cat([root_token.reshape(1), topk_tokens[:, : self.topk].reshape(-1)])
        return flat[self.tree_indices]
