"""Tree verification and acceptance, shared by every drafter.

One verify step: the last accepted path's KV entries are moved to the contiguous prefix, then the
tree's tokens (root = the base model's next token, then the drafter's candidates) go through ONE
forward whose ``AttentionMeta.tree`` layout lets each node see the prefix and its own ancestors,
at RoPE positions prefix + depth, written into cache slots prefix + node index.

Acceptance modes:
- "greedy": longest path whose tokens equal the base argmax: output == plain greedy, token for token.
- "typical" (Medusa): accept while p_base(token) > min(posterior_threshold, posterior_alpha *
  exp(-entropy)); the next root is sampled from the base. Not distribution-preserving.
- "speculative": exact. The drafts at a node are deterministic, so its children are tried in rank
  order: child c is accepted with probability p(c) / (mass not yet rejected); on acceptance we
  descend into c, otherwise c's mass is removed; when no child is accepted the next token is sampled
  from p with the rejected tokens zeroed (renormalised): SpecInfer's multi-draft recursive rejection
  sampling for point-mass drafts, distributed exactly as plain sampling. One host sync per step.
"""

from __future__ import annotations

import torch

from .attention_meta import AttentionMeta
from .sampling import logits_to_probs, sample_from_probs
from .tree import TreeBuffers

__all__ = ["ACCEPTANCE", "SpecState", "verify", "accept_greedy", "accept_typical", "accept_speculative",
           "speculative_walk", "advance"]

ACCEPTANCE = ("greedy", "typical", "speculative")


class SpecState:
    """Device-resident loop state of one speculative request; every tensor is static (CUDA-graph
    friendly) and ``reset`` refills it in place, so a captured step is reused across requests."""

    def __init__(self, tb: TreeBuffers, out_len: int, max_steps: int, device):
        z = dict(dtype=torch.long, device=device)
        self.tree_tokens = torch.zeros(tb.num_nodes, **z)  # (N+1,)
        self.prefix = torch.zeros(1, **z)
        self.src = torch.zeros(tb.num_heads + 1, **z)  # pending KV move of the accepted path
        self.dst = torch.zeros(tb.num_heads + 1, **z)
        self.n_gen = torch.zeros(1, **z)
        self.out = torch.zeros(out_len, **z)
        self.step = torch.zeros(1, **z)
        self.accept = torch.zeros(max_steps, **z)

    def tensors(self):
        return [self.tree_tokens, self.prefix, self.src, self.dst, self.n_gen, self.out, self.step, self.accept]

    def put(self, name: str, value: torch.Tensor) -> None:
        """In place when the shape is unchanged (always, for a fixed tree: CUDA-graph safe); a drafter
        whose trees change shape runs uncaptured, so its state tensors may be replaced."""
        cur = getattr(self, name)
        if cur.shape == value.shape:
            cur.copy_(value)
        else:
            setattr(self, name, value.clone())

    def reset(self, prefix_len: int) -> None:
        # out, accept and tree_tokens are written before they are read (out[:n_gen], accept[:step], the
        # first propose): only the counters and the prefix are reset, five launches a request
        for t in (self.n_gen, self.step):
            t.zero_()
        for t in (self.prefix, self.src, self.dst):
            t.fill_(prefix_len)


def verify(model, backend: str, tb: TreeBuffers, st: SpecState, features=None):
    """Move the last accepted path's KV to the prefix, then one forward over the tree.
    -> logits (N+1, V), features (F, N+1, H) (or the final hidden (N+1, H) when ``features`` is None)."""
    model.copy_kv(st.src, st.dst)
    meta = AttentionMeta.tree(st.prefix, tb.depth, tb.ancestors)
    logits, hidden = model(st.tree_tokens[None], meta, backend=backend, features=features)
    return logits[0], (hidden[0] if features is None else hidden[:, 0])


def _path_tokens(tb, tree_tokens):
    cand = tree_tokens[tb.retrieve]  # (P, D+1)
    return torch.where(tb.retrieve_valid, cand, -1)  # padding never matches a real token


def accept_greedy(tb, tree_tokens, logits):
    pred = logits.argmax(-1)[tb.retrieve]  # (P, D+1) base argmax after each path node
    cand = _path_tokens(tb, tree_tokens)
    acc_len = (cand[:, 1:] == pred[:, :-1]).long().cumprod(-1).sum(-1)  # (P,)
    best = acc_len.argmax(0, keepdim=True)  # (1,): 0-dim tensor indices would sync (.item()) on CUDA
    a = acc_len[best]
    return best, a, pred[best, a]


def accept_typical(tb, tree_tokens, logits, temperature, top_p, threshold, alpha, gen):
    probs = torch.softmax(logits.float() / temperature, -1)  # (N+1, V)
    ent = -(probs * torch.log(probs + 1e-10)).sum(-1)  # (N+1,)
    cand = _path_tokens(tb, tree_tokens)
    parents = tb.retrieve[:, :-1]  # (P, D)
    p = probs[parents, cand[:, 1:].clamp(min=0)]  # (P, D) base prob of each candidate
    ok = (p > torch.minimum(torch.full_like(p, threshold), alpha * torch.exp(-ent[parents]))) & tb.retrieve_valid[:, 1:]
    okc = ok.long().cumprod(-1)
    acc_len = okc.sum(-1)
    # longest first, then the most likely path (Medusa picks by likelihood among the longest)
    score = acc_len.float() * 1e4 + (torch.log(p.clamp(min=1e-30)).clamp(min=-100) * okc).sum(-1)
    best = score.argmax(0, keepdim=True)  # (1,)
    a = acc_len[best]
    last = tb.retrieve[best, a]
    nxt = sample_from_probs(logits_to_probs(logits[last], temperature, top_p), gen)
    return best, a, nxt


def speculative_walk(children: list[list[int]], child_tokens, child_probs, uniforms):
    """Host part of exact tree speculative sampling.

    children[i]: child node ids of node i in rank order; child_tokens / child_probs[i][j]: token and
    base probability of children[i][j] under node i's distribution; uniforms: iterator of U(0,1).
    -> (accepted node ids after the root, final node, tokens rejected at the final node).
    """
    node, path = 0, []
    while True:
        left, rejected, nxt = 1.0, [], None
        for j, c in enumerate(children[node]):
            p = float(child_probs[node][j])
            if left > 1e-12 and next(uniforms) * left < p:
                nxt = c
                break
            left -= p
            rejected.append(int(child_tokens[node][j]))
        if nxt is None:
            return path, node, rejected
        path.append(nxt)
        node = nxt


def accept_speculative(tb, tree_tokens, logits, temperature, top_p, gen, rng):
    probs = logits_to_probs(logits, temperature, top_p)  # (N+1, V)
    kids = tb.children.clamp(min=0)
    ktok = tree_tokens[kids]  # (N+1, C)
    kp = probs.gather(1, ktok)
    ktok, kp = ktok.cpu().numpy(), kp.cpu().numpy()  # the one host sync of the step
    path, last, rejected = speculative_walk(tb.children_list, ktok, kp, iter(rng.random(64).tolist()))
    p = probs[last]
    if rejected:
        p = p.clone()
        p[torch.tensor(rejected, device=p.device)] = 0.0
        if float(p.sum()) <= 0:  # all mass was on rejected drafts (float round-off): keep p
            p = probs[last]
    nxt = sample_from_probs(p / p.sum(), gen)
    dev = logits.device
    return tb.node_path[last: last + 1], torch.tensor([len(path)], device=dev), nxt.reshape(1)


def advance(drafter, tb, st: SpecState, feats, best, a, next_root) -> None:
    """Emit the accepted path, schedule its KV move, let the drafter roll its own state back to the
    path and propose the next tree. In place, no host sync. ``feats`` (F, N+1, H)."""
    D1 = tb.num_heads + 1
    ar = torch.arange(D1, device=st.out.device)
    # best, a: (1,) long. Entries of nodes past a are padding: harmless (moved, then overwritten)
    nodes = tb.retrieve[best][0]  # (D+1,)
    st.out[st.n_gen + ar] = st.tree_tokens[nodes]
    st.put("src", st.prefix + nodes)
    st.put("dst", st.prefix + ar)
    st.accept[st.step] = a + 1
    st.step.add_(1)
    st.n_gen.add_(a + 1)
    st.prefix.add_(a + 1)
    drafter.accept(feats, nodes, a)
    st.put("tree_tokens", drafter.propose(next_root, feats[:, nodes[a]]))

