"""EAGLE-2 dynamic draft tree: grow by confidence, keep the best N nodes, verify in one forward.

Design points:
- Growth (``grow_tree``): depth 1 takes the draft's top-k tokens after the root; at every further depth
  the k *frontier* nodes (the most confident of the previous depth by cumulative log-prob) are drafted
  as one batch of k queries, each proposing its top-k children; the best k of those k*k become the next
  frontier. Every proposed node is a candidate: 1 + k + (depth-1)*k*k of them, a fixed count, so all
  shapes are static.
- Selection (``select_tree``): the best ``num_nodes`` candidates by cumulative log-prob. A child's score
  is parent + log p <= parent (IEEE addition is monotonic), and ties go to the shallower node (stable sort
  over depth-major order), so the kept set is always prefix-closed: every kept node's parent is kept.
- Output (``DynamicTree``): the fields runtime/tree.py's ``TreeBuffers`` gives the exact verify path
  (``mask``, ``depth`` = position offset, ``ancestors``, ``retrieve``/``retrieve_valid``), plus the tree's
  ``tokens`` and ``parents``. Nodes are in depth-major order (parents first), node 0 = the root.
  ``retrieve`` has one row per node (its root path), a static (N+1, D+1) shape instead of one row per
  leaf; the longest accepted path is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["DynamicTree", "select_tree", "grow_tree", "num_candidates"]


@dataclass
class DynamicTree:
    tokens: torch.Tensor          # (N+1,) node tokens, node 0 = root
    parents: torch.Tensor         # (N+1,) parent node, -1 for the root
    depth: torch.Tensor           # (N+1,) depth = RoPE position offset from the root
    mask: torch.Tensor            # (N+1, N+1) bool, node i attends to j iff j is i's ancestor or itself
    ancestors: torch.Tensor       # (N+1, D+1) node ids root..node, padded with 0
    retrieve: torch.Tensor        # (N+1, D+1) = ancestors: the path to each node
    retrieve_valid: torch.Tensor  # (N+1, D+1) bool, real entries of retrieve
    scores: torch.Tensor          # (N+1,) cumulative draft log-prob (root 0)
    cand_index: torch.Tensor      # (N+1,) which candidate each node is (0 = root)

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_heads(self) -> int:  # TreeBuffers' name for the maximal depth (static: the grown depth)
        return self.ancestors.shape[1] - 1

    # what the distribution-exact acceptance (runtime.verify.accept_speculative) reads; host-side, so
    # only for the eagerly accepted sampling modes
    @property
    def children_list(self) -> list[list[int]]:
        """Child node ids of each node in draft-rank order (node order keeps a parent's children ranked)."""
        parents = self.parents.tolist()
        kids: list[list[int]] = [[] for _ in parents]
        for i in range(1, len(parents)):
            kids[parents[i]].append(i)
        return kids

    @property
    def children(self) -> torch.Tensor:
        """(N+1, C) child node ids, padded with -1."""
        kids = self.children_list
        C = max(1, max(map(len, kids)))
        return torch.tensor([k + [-1] * (C - len(k)) for k in kids], dtype=torch.long, device=self.tokens.device)

    @property
    def node_path(self) -> torch.Tensor:
        """Row of ``retrieve`` that ends at each node: one row per node, so the node itself."""
        return torch.arange(self.num_nodes, device=self.tokens.device)


def num_candidates(top_k: int, depth: int) -> int:
    return 1 + top_k + (depth - 1) * top_k * top_k


_CONSTS: dict = {}


def _const(kind: str, n: int, device, k: int = 0) -> torch.Tensor:
    """Small index constants, built once per (kind, size, device) and then only read: inside a captured
    step each rebuilt ``arange``/``full`` would be one more launch per step."""
    key = (kind, n, k, str(device))
    t = _CONSTS.get(key)
    if t is None:
        z = dict(dtype=torch.long, device=device)
        if kind == "arange":
            t = torch.arange(n, **z)
        elif kind == "zeros":
            t = torch.zeros(n, **z)
        elif kind == "fronts0":  # (n, k): row 0 = 1..k, row d = the first candidate id of depth d+1
            t = torch.cat([torch.arange(1, k + 1, **z)[None]] +
                          [torch.full((1, k), 1 + k + (d - 1) * k * k, **z) for d in range(1, n)])
        elif kind == "minus1":
            t = torch.full((n,), -1, **z)
        elif kind == "zero_f":
            t = torch.zeros(n, dtype=torch.float32, device=device)
        elif kind == "depths":  # candidate depths of a (top_k = k, depth = n) growth: 0, 1 x k, d x k*k
            t = torch.cat([torch.zeros(1, **z), torch.ones(k, **z)] +
                          [torch.full((k * k,), d + 1, **z) for d in range(1, n)])
        elif kind == "parents1":  # parents of the root and the depth-1 candidates
            t = torch.cat([torch.full((1,), -1, **z), torch.zeros(k, **z)])
        else:
            raise KeyError(kind)
        _CONSTS[key] = t
    return t


def select_tree(cand_tokens: torch.Tensor, cand_scores: torch.Tensor, cand_parents: torch.Tensor,
                cand_depth: torch.Tensor, num_nodes: int, max_depth: int | None = None,
                out: DynamicTree | None = None) -> DynamicTree:
    """Candidates in depth-major order (0 = root, parents before children; ``cand_parents`` index the
    candidate list, -1 for the root) -> the best ``num_nodes`` non-root candidates as a tree.

    No host sync and no data-dependent shape when ``max_depth`` (the deepest candidate's depth, which
    sizes ``ancestors``) is given, as ``grow_tree`` does: then it runs inside a captured CUDA graph.
    ``out``: a tree of static buffers of the right shapes, written in place (no copy launches) and
    returned."""
    M = cand_tokens.shape[0]
    N = min(num_nodes, M - 1)
    dev = cand_tokens.device
    D = max_depth if max_depth is not None else (int(cand_depth.max()) if M > 1 else 0)

    def o(name):
        return None if out is None else getattr(out, name)

    # stable descending sort over depth-major order: ties keep the shallower (parent) first
    order = torch.sort(cand_scores[1:], descending=True, stable=True).indices[:N] + 1  # (N,) candidate ids
    keep = torch.sort(order).values  # depth-major again: parents precede children
    cand_index = torch.cat([_const("zeros", 1, dev), keep], out=o("cand_index"))  # (N+1,)
    ar = _const("arange", N + 1, dev)
    node_of = torch.zeros(M, dtype=torch.long, device=dev).index_put_((cand_index,), ar)  # root -> 0
    # parent node of each node, the root its own (so walking up past the top stays at the root)
    up1 = node_of[cand_parents[cand_index].clamp(min=0)]  # (N+1,)
    is_root = cand_index == 0
    parents = torch.where(is_root, _const("minus1", 1, dev), up1, out=o("parents"))
    depth = torch.index_select(cand_depth, 0, cand_index, out=o("depth"))
    # chain[u, i]: node i's u-th ancestor (the root past the top); column c of a node's ancestors is
    # its (depth - c)-th ancestor: a gather, static in shape (no boolean indexing)
    up = [ar]
    for _ in range(D):
        up.append(up1[up[-1]])
    chain = torch.stack(up)  # (D+1, N+1)
    cols = _const("arange", D + 1, dev)
    valid = torch.le(cols[None, :], depth[:, None], out=o("retrieve_valid"))  # (N+1, D+1)
    dist = (depth[:, None] - cols[None, :]).clamp(min=0)  # (N+1, D+1) steps up to column c
    anc = torch.mul(chain.gather(0, dist.T).T, valid, out=o("ancestors"))  # (N+1, D+1), padded with the root (0)
    # padding points at the root, itself an ancestor of every node: scattering True there is harmless
    mask = torch.zeros(N + 1, N + 1, dtype=torch.bool, device=dev) if out is None else out.mask.zero_()
    mask.scatter_(1, anc, True)
    sc = torch.index_select(cand_scores, 0, cand_index)
    scores = torch.where(is_root, sc.new_zeros(()) if out is None else _const("zero_f", 1, dev), sc, out=o("scores"))
    tokens = torch.index_select(cand_tokens, 0, cand_index, out=o("tokens"))
    if out is not None:
        return out
    return DynamicTree(tokens=tokens, parents=parents, depth=depth, mask=mask, ancestors=anc,
                       retrieve=anc, retrieve_valid=valid, scores=scores, cand_index=cand_index)


def grow_tree(root_token: torch.Tensor, first_logp: torch.Tensor, step: Callable, top_k: int, depth: int,
              num_nodes: int, out: DynamicTree | None = None) -> DynamicTree:
    """Grow EAGLE-2's candidate set and select the tree.

    root_token: () or (1,) the base model's next token; first_logp (V,): the draft's log-probs after it.
    ``step(d, tokens (k,), parent_rows (k,)) -> logp (k, V)`` drafts the depth-``d`` frontier (d >= 1):
    ``tokens`` are the frontier's tokens and ``parent_rows`` index the previous frontier (depth d-1; for
    d = 1 all 0, the root's query) whose draft state each continues. It must remember its own per-row
    state (hidden, KV slots) between calls. ``out``: static tree buffers to select into (``select_tree``).
    Per depth: one batched top-k over the k frontier rows, one over their k*k children; the candidate
    lists are assembled once at the end (depths and the first parents are constants).
    """
    if top_k < 1 or depth < 1 or num_nodes < 1:
        raise ValueError(f"top_k, depth and num_nodes must be >= 1, got {top_k}, {depth}, {num_nodes}")
    dev = first_logp.device
    k = min(top_k, first_logp.shape[-1])
    top = first_logp.float().topk(k)
    toks, scores, bests = [root_token.reshape(1).long(), top.indices], [_const("zero_f", 1, dev), top.values], []
    front_tok, front_score = top.indices, top.values           # (k,) frontier at depth 1
    front_parent_row = _const("zeros", k, dev)                 # all continue the root's query
    for d in range(1, depth):
        logp = step(d, front_tok, front_parent_row).float()    # (k, V): children of each frontier node
        child = logp.topk(k, dim=-1)
        cum = (front_score[:, None] + child.values).reshape(-1)  # (k*k,)
        ctok = child.indices.reshape(-1)
        toks.append(ctok)
        scores.append(cum)
        best = cum.topk(k).indices                               # next frontier: best k of k*k
        bests.append(best)
        front_tok, front_score, front_parent_row = ctok[best], cum[best], best // k
    parents = [_const("parents1", 1, dev, k)]
    if depth > 1:  # each frontier node is the parent of its k children, in order
        # frontier candidate ids: depth 1's are 1..k, depth d+1's offset_d + best_d (d >= 1): all at once
        fronts = _const("fronts0", depth - 1, dev, k)  # (depth-1, k): 1..k, then each depth's offset
        if depth > 2:
            fronts = fronts + torch.cat([_const("zeros", k, dev)[None], torch.stack(bests[:-1])])
        parents.append(fronts[:, :, None].expand(-1, -1, k).reshape(-1))
    return select_tree(torch.cat(toks), torch.cat(scores), torch.cat(parents), _const("depths", depth, dev, k),
                       num_nodes, max_depth=depth, out=out)
