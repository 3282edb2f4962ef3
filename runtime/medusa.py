"""Medusa tree decoding on the compact model's static KV cache (batch 1).

One step: the tree's tokens (root = the base model's next token, then the heads' top-k along the
tree) go through ONE forward with the ancestor-only mask, RoPE positions prefix + depth, written
into cache slots prefix + node index. Acceptance picks a path; its tokens are emitted and its KV
entries are moved to the contiguous prefix (slots prefix..prefix+a). The move is done at the start
of the *next* step's graph, before the new tree overwrites those slots.

Acceptance modes:
- "greedy": longest path whose tokens equal the base argmax: output == plain greedy, token for token.
- "typical" (Medusa): accept while p_base(token) > min(posterior_threshold, posterior_alpha *
  exp(-entropy)); the next root is sampled from the base. Not distribution-preserving.
- "speculative": exact. The heads' top-k are deterministic drafts, so at each node the children are
  tried in rank order: child c is accepted with probability p(c) / (mass not yet rejected); on
  acceptance we descend into c, otherwise c's mass is removed; when no child is accepted the next
  token is sampled from p with the rejected tokens zeroed (renormalised). This is SpecInfer's
  multi-draft recursive rejection sampling for point-mass drafts; the output is distributed exactly
  as plain sampling with the same temperature / top_p. It syncs with the host once per step.
With temperature == 0 every mode is greedy.

No host sync per step in greedy/typical mode: all state (prefix length, output buffer, counters)
lives on the device; "done?" is checked every ``check_every`` steps, so a few extra steps may run
past the end and their tokens are dropped. In greedy mode the whole step (KV move, verify forward,
acceptance, heads, next tree) is one CUDA graph.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .decode import GenerationResult, StepGraph, _sync, capture_mode, exact_kernels, resolve_mode
from .sampling import check_sampling_args, logits_to_probs, make_generator, sample_from_probs
from .tree import TreeBuffers, default_tree

__all__ = ["generate_medusa"]

_MODES = ("greedy", "typical", "speculative")


def _heads_dtype(heads) -> torch.dtype:
    for t in list(heads.parameters()) + list(heads.buffers()):
        return t.dtype
    raise ValueError("MedusaHeads has neither parameters nor buffers; call attach_lm_head first")


class _State:
    """Device-resident loop state; every tensor is static (CUDA-graph friendly)."""

    def __init__(self, tb: TreeBuffers, prefix_len: int, out_len: int, max_steps: int, device):
        z = dict(dtype=torch.long, device=device)
        self.tree_tokens = torch.zeros(tb.num_nodes, **z)  # (N+1,)
        self.prefix = torch.full((1,), prefix_len, **z)
        self.src = torch.full((tb.num_heads + 1,), prefix_len, **z)  # pending KV move
        self.dst = torch.full((tb.num_heads + 1,), prefix_len, **z)
        self.n_gen = torch.zeros(1, **z)
        self.out = torch.zeros(out_len, **z)
        self.step = torch.zeros(1, **z)
        self.accept = torch.zeros(max_steps, **z)

    def tensors(self):
        return [self.tree_tokens, self.prefix, self.src, self.dst, self.n_gen, self.out, self.step, self.accept]


def _verify(model, tb: TreeBuffers, st: _State):
    """Move the last accepted path's KV to the prefix, then one forward over the tree.
    -> logits (N+1, V), hidden (N+1, H)."""
    model.copy_kv(st.src, st.dst)
    n = tb.num_nodes
    ar = torch.arange(n, device=st.prefix.device)
    if model.exact:  # node i sees the prefix, then its ancestors' slots in depth order
        logits, hidden = model.forward_exact(st.tree_tokens[None], (st.prefix + tb.depth)[None], (st.prefix + ar)[None],
                                             torch.zeros_like(st.prefix), st.prefix, (st.prefix + tb.depth + 1)[None],
                                             (st.prefix + tb.ancestors)[None])
        return logits[0], hidden[0]
    slots = torch.arange(model.max_seq_len, device=st.prefix.device)
    cols = slots - st.prefix  # tree node held by each slot, if any
    in_tree = (cols >= 0) & (cols < n)
    tree_part = tb.mask[:, cols.clamp(0, n - 1)] & in_tree  # (N+1, S)
    mask = ((slots < st.prefix) | tree_part)[None, None]  # (1, 1, N+1, S)
    logits, hidden = model(st.tree_tokens[None], (st.prefix + tb.depth)[None], mask=mask,
                           write_pos=(st.prefix + ar)[None])
    return logits[0], hidden[0]


def _path_tokens(tb, tree_tokens):
    cand = tree_tokens[tb.retrieve]  # (P, D+1)
    return torch.where(tb.retrieve_valid, cand, -1)  # padding never matches a real token


def _accept_greedy(tb, tree_tokens, logits):
    pred = logits.argmax(-1)[tb.retrieve]  # (P, D+1) base argmax after each path node
    cand = _path_tokens(tb, tree_tokens)
    acc_len = (cand[:, 1:] == pred[:, :-1]).long().cumprod(-1).sum(-1)  # (P,)
    best = acc_len.argmax(0, keepdim=True)  # (1,): 0-dim tensor indices would sync (.item()) on CUDA
    a = acc_len[best]
    return best, a, pred[best, a]


def _accept_typical(tb, tree_tokens, logits, temperature, top_p, threshold, alpha, gen):
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


def _accept_speculative(tb, tree_tokens, logits, temperature, top_p, gen, rng):
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


def _advance(heads, tb, st: _State, hidden, best, a, next_root):
    """Emit the accepted path, schedule its KV move, build the next tree. In place, no host sync."""
    D1 = tb.num_heads + 1
    ar = torch.arange(D1, device=hidden.device)
    # best, a: (1,) long. Entries of nodes past a are padding: harmless, see the module docstring
    nodes = tb.retrieve[best][0]  # (D+1,)
    st.out[st.n_gen + ar] = st.tree_tokens[nodes]
    st.src.copy_(st.prefix + nodes)
    st.dst.copy_(st.prefix + ar)
    st.accept[st.step] = a + 1
    st.step.add_(1)
    st.n_gen.add_(a + 1)
    st.prefix.add_(a + 1)
    h = hidden[nodes[a]].to(_heads_dtype(heads))  # (1, H)
    topk = heads(h[None])[:, 0, 0].topk(tb.topk, dim=-1).indices  # (K, topk)
    st.tree_tokens.copy_(tb.candidates(next_root, topk[: tb.num_heads]))


@torch.no_grad()
def generate_medusa(model, heads, prompt_ids: list[int], max_new_tokens: int, tree=None,
                    temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, eos_ids=(),
                    acceptance: str = "greedy", posterior_threshold: float = 0.09,
                    posterior_alpha: float = 0.3, compile=None, check_every: int = 4) -> GenerationResult:
    """Medusa decoding for one prompt. ``tree``: list of paths, a TreeBuffers, or None (default tree).

    Returns a GenerationResult whose ``accept_lengths`` are the tokens emitted per verify step.
    """
    check_sampling_args(temperature, top_p)
    if acceptance not in _MODES:
        raise ValueError(f"acceptance must be one of {_MODES}, got {acceptance!r}")
    if not prompt_ids or max_new_tokens < 1:
        raise ValueError("need a non-empty prompt and max_new_tokens >= 1")
    device = model.device
    mode = resolve_mode(compile, device, model)
    if mode == "compile":
        raise ValueError("generate_medusa captures its step with a manual CUDA graph: use compile=None, "
                         "'exact', 'graph' or 'inductor'")
    with exact_kernels(model, mode == "exact"):
        return _generate_medusa(model, heads, prompt_ids, max_new_tokens, tree, temperature, top_p, seed, eos_ids,
                                acceptance, posterior_threshold, posterior_alpha, capture_mode(mode, device),
                                check_every)


def _generate_medusa(model, heads, prompt_ids, max_new_tokens, tree, temperature, top_p, seed, eos_ids,
                     acceptance, posterior_threshold, posterior_alpha, mode, check_every):
    device = model.device
    if temperature == 0:
        acceptance = "greedy"
    K = heads.config.num_heads
    tb = tree if isinstance(tree, TreeBuffers) else TreeBuffers(tree or default_tree(K), device=device)
    if tb.num_heads > K or tb.topk > heads.config.vocab_size:
        raise ValueError(f"tree depth {tb.num_heads} needs that many heads (have {K}); build it for {K} heads")
    if tb.tree_indices.device != torch.device(device) and tb.tree_indices.device.type != torch.device(device).type:
        raise ValueError(f"TreeBuffers live on {tb.tree_indices.device}, model on {device}: build it with device=")
    L, D1, N1 = len(prompt_ids), tb.num_heads + 1, tb.num_nodes
    max_steps = max_new_tokens + check_every + 1
    model.setup_cache(1, L + max_new_tokens + (check_every + 1) * D1 + N1)
    gen = make_generator(device, seed)
    rng = np.random.default_rng(seed)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)

    _sync(device)
    t0 = time.perf_counter()
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    pos = torch.arange(L, device=device)[None]
    if model.exact:
        zero = torch.zeros(1, dtype=torch.long, device=device)
        logits, hidden = model.forward_exact(ids, pos, pos, zero, zero + L, pos + 1, last_only=True)
    else:
        logits, hidden = model(ids, pos, last_only=True)
    st = _State(tb, L, max_new_tokens + (check_every + 1) * D1, max_steps, device)
    root = logits[0, -1].argmax(-1) if acceptance == "greedy" else \
        sample_from_probs(logits_to_probs(logits[0, -1], temperature, top_p), gen)
    topk = heads(hidden[:, -1:].to(_heads_dtype(heads)))[:, 0, 0].topk(tb.topk, dim=-1).indices
    st.tree_tokens.copy_(tb.candidates(root, topk[: tb.num_heads]))
    _sync(device)
    t1 = time.perf_counter()

    # Captured per call (not cached on the model): the graph closes over this call's state tensors.
    if acceptance == "greedy":
        def fused():
            lg, hd = _verify(model, tb, st)
            best, a, nxt = _accept_greedy(tb, st.tree_tokens, lg)
            _advance(heads, tb, st, hd, best, a, nxt)
            return ()
        saved = [t.clone() for t in st.tensors()]
        step = StepGraph(fused, [], mode, model)
        for dst, src in zip(st.tensors(), saved):  # the warm-up runs advanced the state
            dst.copy_(src)
    else:
        vstep = StepGraph(lambda: _verify(model, tb, st), [], mode, model)  # its warm-up only writes free slots

        def step():
            lg, hd = vstep()
            if acceptance == "typical":
                best, a, nxt = _accept_typical(tb, st.tree_tokens, lg, temperature, top_p,
                                               posterior_threshold, posterior_alpha, gen)
            else:
                best, a, nxt = _accept_speculative(tb, st.tree_tokens, lg, temperature, top_p, gen, rng)
            _advance(heads, tb, st, hd, best, a, nxt)
    _sync(device)
    t2 = time.perf_counter()

    for i in range(max_steps):
        step()
        if (i + 1) % check_every == 0 or i == max_steps - 1:
            n = int(st.n_gen)
            if len(eos) and bool(torch.isin(st.out[:n], eos).any()):
                break
            if n >= max_new_tokens:
                break
    n = int(st.n_gen)
    toks = st.out[: min(n, max_new_tokens)].tolist()
    accept = st.accept[: int(st.step)].tolist()
    _sync(device)
    t3 = time.perf_counter()
    first = next((j for j, t in enumerate(toks) if t in set(eos_ids)), None)
    hit_eos = first is not None
    if hit_eos:
        toks = toks[: first + 1]
    # keep the steps that produced the returned tokens (the last one may be cut short)
    kept, total = [], 0
    for x in accept:
        if total >= len(toks):
            break
        kept.append(x)
        total += x
    return GenerationResult(tokens=toks, num_new=len(toks), prefill_s=t1 - t0, decode_s=t3 - t2,
                            capture_s=t2 - t1, stopped_on_eos=hit_eos, accept_lengths=kept)
