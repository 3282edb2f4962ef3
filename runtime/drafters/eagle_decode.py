"""EAGLE decoding on the compact model's exact tree-verify path (batch 1, eager).

One step, with P tokens committed (base KV and draft KV hold positions 0..P-1) and the root r = the base
model's next token (position P):
1. Draft: the draft already ran the query at P-1 (token r) -> depth-1 log-probs. ``grow_tree`` drafts
   frontiers of k nodes per depth (k queries at once, written to draft slots past the committed length,
   each attending to the committed prefix and its own ancestors) and keeps the best N nodes.
2. Verify: one base forward over the N+1 tree tokens with the ancestor-only mask, RoPE position P + depth,
   cache slots P + node (``runtime/medusa.py``'s ``_verify`` layout), returning logits and the EAGLE-3
   features of every node.
3. Accept: the longest root path whose tokens equal the base argmax after their parent (greedy: output ==
   plain greedy); a accepted drafts + the root are emitted, the base argmax after the last becomes the next
   root. Their base KV entries move to slots P..P+a.
4. Catch up: the draft re-runs positions P..P+a on the *verified* features (tokens: the accepted drafts,
   then the new root), overwriting its dead tree slots: its cache is rolled back to the accepted path
   by construction, and its last query gives the next depth-1 log-probs.

Acceptance: "greedy" (temperature 0) -- the output is plain greedy's, token for token; "speculative" --
distribution-exact: the draft tree's tokens are deterministic given the context (top-k of the draft), so at
each node the children are tried in draft-rank order, child c accepted with probability p(c) / (mass not yet
rejected); when none is, the next token is drawn from p with the rejected tokens removed (SpecInfer's
multi-draft rejection for point-mass drafts, as runtime/medusa.py does). The output is distributed exactly
as plain sampling with the same temperature / top_p. The drafter never decides the output, only how many
tokens a step emits, so any drafter (random, wrong, untrained) is lossless.

This stand-alone loop is eager, with a few host reads per step (acceptance length, loop control): it is the
reference the engine's captured step is tested against. The engine runs EAGLE through ``EagleDrafter`` and
``runtime.speculative``, whose step uses the static-shape pieces here (``_draft_catch_up_static``, ``_draft_tree``
with a device-side length) and is one CUDA graph.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..attention_meta import AttentionMeta
from ..plain import GenerationResult
from ..sampling import check_sampling_args, logits_to_probs, make_generator, sample_from_probs
from ..steps import backend_for, resolve_mode, sync
from .dynamic_tree import DynamicTree, _const, grow_tree
from .eagle import DraftCache, EagleDraft

__all__ = ["generate_eagle", "eagle_prefill", "eagle_step", "verify_tree", "accept_greedy", "accept_speculative",
           "forward_features"]  # _draft_* are the drafter's building blocks


def forward_features(model, layers, input_ids, meta, *, backend: str = "sdpa", last_only: bool = False):
    """The base forward with EAGLE-3's features -> (logits, final hidden (B, T, H), features (B, T, F*H)).

    EAGLE-3 (and SGLang / vLLM) take the *input* of decoder layer i (transformers' ``hidden_states[i]``);
    ``CompactLM.forward(features=)`` returns layer *outputs*, so layer i's input is layer i-1's output
    (layer 0's input is the bare embedding, which the draft reads anyway: refused)."""
    n = len(model.layers)
    if not layers or any(not 1 <= i < n for i in layers):
        raise ValueError(f"feature layers {list(layers)} must lie in 1..{n - 1}")
    logits, stack = model(input_ids, meta, backend=backend, last_only=last_only,
                          features=[i - 1 for i in layers] + [-1])  # (F+1, B, T, H)
    return logits, stack[-1], torch.cat(list(stack[:-1]), dim=-1)


def verify_tree(model, layers, tree: DynamicTree, prefix: int, backend: str = "sdpa"):
    """One base forward over the tree at committed length ``prefix`` -> (logits (N+1, V), features (N+1, 3H)).
    Node i sees the prefix, then its ancestors' slots (``AttentionMeta.tree``, the layout Medusa verifies with)."""
    p = torch.full((1,), prefix, dtype=torch.long, device=tree.tokens.device)
    meta = AttentionMeta.tree(p, tree.depth, tree.ancestors)
    logits, _, feats = forward_features(model, layers, tree.tokens[None], meta, backend=backend)
    return logits[0], feats[0]


def accept_greedy(tree: DynamicTree, logits: torch.Tensor):
    """-> (accepted node ids root..last (a+1,), next root token ())."""
    pred = logits.argmax(-1)  # (N+1,)
    cand = torch.where(tree.retrieve_valid, tree.tokens[tree.retrieve], -1)  # (N+1, D+1)
    ok = (cand[:, 1:] == pred[tree.retrieve[:, :-1]]) & tree.retrieve_valid[:, 1:]
    acc_len = ok.long().cumprod(-1).sum(-1)  # (N+1,)
    best = int(acc_len.argmax())
    a = int(acc_len[best])
    nodes = tree.retrieve[best, : a + 1]
    return nodes, pred[nodes[-1]]


def accept_speculative(tree: DynamicTree, logits: torch.Tensor, temperature: float, top_p: float,
                       gen: torch.Generator, rng: np.random.Generator):
    """Distribution-exact tree acceptance (see the module docstring). One host sync.
    -> (accepted node ids root..last (a+1,), next token ())."""
    probs = logits_to_probs(logits, temperature, top_p)  # (N+1, V)
    parents = tree.parents.tolist()
    tokens = tree.tokens.tolist()
    kids: list[list[int]] = [[] for _ in parents]
    for i in range(1, len(parents)):  # node order keeps each parent's children in draft-rank order
        kids[parents[i]].append(i)
    kid_p = probs[:, tree.tokens].cpu().numpy()  # (N+1, N+1): [i, j] = p(node j's token | node i); the host sync
    node, path = 0, [0]
    while True:
        left, rejected, nxt = 1.0, [], None
        for c in kids[node]:
            p = float(kid_p[node, c])
            if left > 1e-12 and rng.random() * left < p:
                nxt = c
                break
            left -= p
            rejected.append(tokens[c])
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    p = probs[node]
    if rejected:
        q = p.clone()
        q[torch.tensor(rejected, device=p.device)] = 0.0
        if float(q.sum()) > 0:  # all mass on rejected drafts only through round-off: keep p
            p = q / q.sum()
    return torch.tensor(path, device=logits.device), sample_from_probs(p, gen)


def _draft_catch_up(drafter: EagleDraft, cache: DraftCache, feats, tokens):
    """Draft queries for positions cache.length .. + T-1 (features (T, 3H), next tokens (T,)), causal over
    the committed prefix. Commits them; -> (log-probs after the last (V,), h_out of the last (H,))."""
    T = tokens.shape[0]
    dev = tokens.device
    P = cache.length
    if P + T > cache.max_len:
        raise ValueError(f"draft cache of {cache.max_len} slots is full; build it larger")
    pos = torch.arange(P, P + T, device=dev)[None]  # (1, T)
    slots = torch.arange(cache.max_len, device=dev)
    mask = (slots[None, :] <= pos[0, :, None])[None, None]  # (1, 1, T, S): committed prefix + causal
    logits, h = drafter(feats[None], tokens[None], pos, cache, pos, mask)
    cache.length = P + T
    return torch.log_softmax(logits[0, -1], -1, dtype=torch.float32), h[0, -1]


def _draft_catch_up_static(drafter: EagleDraft, cache: DraftCache, length: torch.Tensor, feats, tokens,
                           a: torch.Tensor):
    """The catch-up over a FIXED number of slots (the CUDA-graph step): features (D+1, 3H) and next tokens
    (D+1,) of the accepted path padded to D+1, of which the first a+1 (``a`` (1,)) are real; the
    committed draft length ``length`` (1,) is a device tensor, advanced in place by a+1.

    Query j runs at position/slot length + j and sees the slots up to its own, so the real queries
    j <= a never see a padded one; the padded queries write slots past the new committed length, which
    the next tree's drafts and the next catch-up overwrite (and the tree's masks exclude until then).
    No host sync. -> (log-probs after the last real query (V,), its h_out (H,))."""
    T = tokens.shape[0]
    dev = tokens.device
    pos = length + _const("arange", T, dev)  # (T,)
    slots = _const("arange", cache.max_len, dev)
    mask = (slots[None, :] <= pos[:, None])[None, None]  # (1, 1, T, S): committed prefix + causal
    logits, h = drafter(feats[None], tokens[None], pos[None], cache, pos[None], mask)
    length.add_(a + 1)
    return torch.log_softmax(logits[0, a][0], -1, dtype=torch.float32), h[0, a][0]


def _draft_tree(drafter: EagleDraft, cache: DraftCache, root, root_logp, root_h, top_k, depth, num_nodes,
                length: torch.Tensor | None = None, out: DynamicTree | None = None):
    """Grow the dynamic tree from the root; draft KV goes to slots past the committed length (dead after).
    ``length`` (1,): the committed draft length as a device tensor (no host sync: the captured step);
    default ``cache.length``. ``out``: static tree buffers written in place (``select_tree``)."""
    dev = root_logp.device
    k = min(top_k, root_logp.shape[-1])
    if length is None:
        if cache.length + depth * k > cache.max_len:
            raise ValueError(f"draft cache of {cache.max_len} slots cannot hold a depth-{depth} tree; build it larger")
        length = torch.full((1,), cache.length, dtype=torch.long, device=dev)
    P = length  # (1,)
    slots = _const("arange", cache.max_len, dev)
    G = drafter.config.num_attention_heads // drafter.config.num_key_value_heads
    # masks kept GQA-folded (G, k, S): the draft's attention takes them as (1, 1, G*k, S) without a copy
    st = {"mask": (slots < P)[None, None].expand(G, k, -1), "h": root_h[None].expand(k, -1)}  # per parent row
    if depth > 1:
        # every depth's slots, positions and own-slot mask rows at once (one launch each, not per depth):
        # the k frontier nodes at depth d write slots P + (d-1)*k + j, query position P - 1 + d
        own = (P + _const("arange", (depth - 1) * k, dev)).view(depth - 1, k)  # (depth-1, k)
        own_mask = slots == own[:, :, None]  # (depth-1, k, S)
        pos_all = P + _const("arange", depth - 1, dev)  # (depth-1,)

    def step(d, tokens, parent_rows):
        # the k frontier nodes at depth d are k queries of one row (a tree, as in verify), each with
        # its own mask row (prefix + ancestors + itself)
        mask = st["mask"][:, parent_rows] | own_mask[d - 1]  # (G, k, S)
        pos = pos_all[d - 1: d].expand(k)[None]  # (1, k)
        logits, h = drafter(st["h"][parent_rows][None], tokens[None], pos, cache, own[d - 1][None],
                            mask.view(1, 1, G * k, -1))
        st["mask"], st["h"] = mask, h[0]
        return torch.log_softmax(logits[0], -1, dtype=torch.float32)  # upcast inside the kernel

    return grow_tree(root, root_logp, step, k, depth, num_nodes, out=out)


def eagle_prefill(model, drafter: EagleDraft, prompt_ids, cache: DraftCache, sampling=None, backend: str = "sdpa"):
    """Base prefill + draft prefill. -> (root token (), draft log-probs after it (V,), draft h (H,))."""
    dev = model.device
    layers = drafter.config.feature_layers
    L = len(prompt_ids)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=dev)
    pos = torch.arange(L, device=dev)[None]
    logits, _, feats = forward_features(model, layers, ids, AttentionMeta.prompt(pos), backend=backend)
    root = logits[0, -1].argmax(-1) if sampling is None else \
        sample_from_probs(logits_to_probs(logits[0, -1], sampling[0], sampling[1]), sampling[2])
    cache.rollback(0)
    logp, h = _draft_catch_up(drafter, cache, feats[0], torch.cat([ids[0, 1:], root.reshape(1)]))
    return root, logp, h


def eagle_step(model, drafter: EagleDraft, cache: DraftCache, prefix: int, root, root_logp, root_h,
               top_k: int, depth: int, num_nodes: int, sampling=None, backend: str = "sdpa"):
    """One draft + verify + accept + catch-up step. -> (emitted tokens (a+1,), next root, its log-probs, h).

    ``sampling``: None (greedy) or (temperature, top_p, torch generator, numpy generator)."""
    tree = _draft_tree(drafter, cache, root, root_logp, root_h, top_k, depth, num_nodes)
    logits, feats = verify_tree(model, drafter.config.feature_layers, tree, prefix, backend)
    nodes, nxt = accept_greedy(tree, logits) if sampling is None else accept_speculative(tree, logits, *sampling)
    a1 = nodes.shape[0]
    ar = torch.arange(a1, device=nodes.device)
    model.copy_kv(prefix + nodes, prefix + ar)  # accepted path's KV to the contiguous prefix
    emitted = tree.tokens[nodes]
    logp, h = _draft_catch_up(drafter, cache, feats[nodes], torch.cat([emitted[1:], nxt.reshape(1)]))
    return emitted, nxt, logp, h


@torch.no_grad()
def generate_eagle(model, drafter: EagleDraft, prompt_ids: list[int], max_new_tokens: int, top_k: int = 8,
                   depth: int = 5, num_nodes: int = 48, eos_ids=(), compile=None, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0) -> GenerationResult:
    """Speculative decoding with an EAGLE draft and a dynamic tree. temperature 0: tokens == plain greedy;
    else distribution-exact sampling (same distribution as plain sampling at that temperature / top_p).

    ``accept_lengths``: tokens emitted per verify step (1 = no draft token accepted)."""
    check_sampling_args(temperature, top_p)
    if not prompt_ids or max_new_tokens < 1:
        raise ValueError("need a non-empty prompt and max_new_tokens >= 1")
    if drafter.config.hidden_size != model.args.hidden or drafter.config.vocab_size != model.vocab_size:
        raise ValueError("the EAGLE draft was built for another model (hidden or vocab size differs)")
    device = model.device
    mode = resolve_mode(compile, device, model)
    if mode not in ("exact", "eager"):
        raise ValueError(f"generate_eagle runs eagerly for now: use compile=None, False or 'exact' (got {compile!r})")
    k = min(top_k, model.vocab_size)
    L = len(prompt_ids)
    backend = backend_for(mode)
    model.setup_cache(1, L + max_new_tokens + num_nodes + depth + 2)
    cache = drafter.new_cache(1, L + max_new_tokens + depth + 1 + depth * k)
    eos = set(int(e) for e in eos_ids)
    sampling = None if temperature == 0 else (temperature, top_p, make_generator(device, seed),
                                              np.random.default_rng(seed))
    sync(device)
    t0 = time.perf_counter()
    root, logp, h = eagle_prefill(model, drafter, prompt_ids, cache, sampling, backend)
    sync(device)
    t1 = time.perf_counter()
    out, accept, prefix = [], [], L
    while len(out) < max_new_tokens and not (eos & set(out)):
        emitted, root, logp, h = eagle_step(model, drafter, cache, prefix, root, logp, h, k, depth, num_nodes,
                                            sampling, backend)
        toks = emitted.tolist()
        out += toks
        accept.append(len(toks))
        prefix += len(toks)
    sync(device)
    t2 = time.perf_counter()
    out = out[:max_new_tokens]
    first = next((j for j, t in enumerate(out) if t in eos), None)
    if first is not None:
        out = out[: first + 1]
    kept, total = [], 0
    for x in accept:
        if total >= len(out):
            break
        kept.append(x)
        total += x
    return GenerationResult(tokens=out, num_new=len(out), prefill_s=t1 - t0, decode_s=t2 - t1,
                            stopped_on_eos=first is not None, accept_lengths=kept)
