"""Speculative tree decoding of one prompt with any drafter (batch 1), as a stepping generator.

Prefill the prompt (its own ``PrefillPlan``), let the drafter propose a tree, then repeat: verify
the tree in one forward, accept a path (``runtime.verify``), emit it, let the drafter roll back and
propose the next tree. All loop state lives on the device (``SpecState``); tokens are read back and
yielded every ``check_every`` steps, so a few extra steps may run past the end (their tokens are
dropped).

The captured step is cached on the model per (drafter, tree, acceptance, backend) together with its
state, and reused across requests: the state is refilled in place (``SpecState.reset``) instead of
capturing a new CUDA graph per request (~50 ms each on the H200 before). The state is sized for the
model's whole KV cache, not for the request that captured it, so a later request asking for more new
tokens reuses it too (a short warm-up request used to make the first real one capture again: EAGLE's
step, ~0.1-0.2 s on the H200, was then part of the per-request overhead averaged over a prompt file). In greedy mode the whole
step (KV move, verify forward, acceptance, drafting) is one graph; in sampling modes the verify
forward is, and acceptance runs eagerly. A drafter whose tree tensors are not static buffers
(``fixed_tree = False``) runs eagerly. A drafter with its own static buffers (EAGLE's draft KV cache)
sizes them through ``reserve`` before the lookup; a reallocation drops the stale capture.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .phases import mark
from .plain import Chunk, GenerationResult, prefill
from .prefill import DENSE
from .sampling import logits_to_probs, make_generator, sample_from_probs
from .steps import StepGraph, backend_for, capture_mode, sync
from .verify import SpecState, accept_greedy, accept_speculative, accept_typical, advance, verify

__all__ = ["speculative_stream"]


class _Captured:
    """A cached step and the static state it closes over."""

    def __init__(self, drafter, state: SpecState, step):
        self.drafter, self.state, self.step = drafter, state, step


def _step_fn(model, backend, drafter, st, acceptance):
    """The fused greedy step, or the verify-only step (sampling modes accept on the side). The tree
    is read at each call: a drafter may propose a new one every step (then nothing is captured)."""
    feats = drafter.feature_layers

    if acceptance == "greedy":
        def fused():
            tb = drafter.tree
            lg, hd = verify(model, backend, tb, st, feats)
            best, a, nxt = accept_greedy(tb, st.tree_tokens, lg)
            advance(drafter, tb, st, hd, best, a, nxt)
            return ()
        return fused

    def verify_only():
        return verify(model, backend, drafter.tree, st, feats)
    return verify_only


def _acceptor(drafter, st, acceptance, temperature, top_p, threshold, alpha, gen, rng):
    def after(lg, hd):
        tb = drafter.tree
        if acceptance == "typical":
            best, a, nxt = accept_typical(tb, st.tree_tokens, lg, temperature, top_p, threshold, alpha, gen)
        else:
            best, a, nxt = accept_speculative(tb, st.tree_tokens, lg, temperature, top_p, gen, rng)
        advance(drafter, tb, st, hd, best, a, nxt)
    return after


def _get_step(model, backend, mode, drafter, acceptance, out_len, max_steps):
    """-> (the cached (state, step) for this drafter and tree, or a new capture when none fits; True
    when it is new)."""
    tb = drafter.tree
    kind = "greedy" if acceptance == "greedy" else "verify"
    # the entry keeps its drafter alive, so the ids inside cache_key() cannot be recycled meanwhile
    key = ("spec", drafter.cache_key(), kind, backend)
    if drafter.reserve(model.max_seq_len):  # its buffers moved: every capture aliasing the old ones is stale
        for k in [k for k, v in model.step_graphs.items() if getattr(v, "drafter", None) is drafter]:
            del model.step_graphs[k]
    hit = model.step_graphs.get((key, mode)) if drafter.fixed_tree else None
    if hit is not None and hit.state.out.numel() >= out_len and hit.state.accept.numel() >= max_steps:
        return hit, False
    # sized for any request the KV cache can hold (a few KB), so none needs a bigger state: the capture
    # is then once per (model cache, drafter, tree), whatever max_new_tokens the requests ask
    st = SpecState(tb, max(out_len, model.max_seq_len), max(max_steps, model.max_seq_len), model.device)
    fn = _step_fn(model, backend, drafter, st, acceptance)
    if not drafter.fixed_tree:
        return _Captured(drafter, st, fn), True
    saved = [t.clone() for t in st.tensors()]
    drafter.reset()  # its warm-up runs then write draft slots from 0, inside what ``reserve`` sized
    step = StepGraph(fn, [], mode)  # its warm-up runs advance the state / write free cache slots
    if hasattr(drafter, "capture_propose"):  # EAGLE: its first tree of a request, captured once too
        drafter.capture_propose(mode)
    for dst, src in zip(st.tensors(), saved):
        dst.copy_(src)
    cap = _Captured(drafter, st, step)
    model.step_graphs[(key, mode)] = cap
    return cap, True


@torch.no_grad()
def speculative_stream(model, drafter, prompt_ids: list[int], max_new_tokens: int, *, mode: str,
                       temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, eos_ids=(),
                       acceptance: str = "greedy", posterior_threshold: float = 0.09, posterior_alpha: float = 0.3,
                       plan=DENSE, check_every: int = 4, row: int = 0):
    """Yield ``Chunk``s for one prompt; the last one carries its GenerationResult (``accept_lengths``:
    tokens emitted per verify step)."""
    device, backend = model.device, backend_for(mode)
    if temperature == 0:
        acceptance = "greedy"
    mark("setup")
    depth, N1 = drafter.bounds()
    L, D1 = len(prompt_ids), depth + 1
    max_steps = max_new_tokens + check_every + 1
    out_len = max_new_tokens + (check_every + 1) * D1
    model.setup_cache(1, L + max_new_tokens + (check_every + 1) * D1 + N1)
    greedy = acceptance == "greedy"
    gen = None if greedy else make_generator(device, seed)  # greedy draws nothing
    rng = None if greedy else np.random.default_rng(seed)
    eos_set = set(eos_ids)

    mark("get_step")
    tc = time.perf_counter()
    cap, fresh = _get_step(model, backend, capture_mode(mode, device), drafter, acceptance, out_len, max_steps)
    if fresh:  # a lookup that hit queued no device work: nothing to wait for
        sync(device)
    capture_s = time.perf_counter() - tc  # ~0 when the step was captured by an earlier request
    st, drafter = cap.state, cap.drafter  # a cached step keeps the drafter it was captured with
    mark("reset")
    t0 = time.perf_counter()
    drafter.reset()
    st.reset(L)
    drafter.set_prompt(prompt_ids)  # before the prefill: a drafter's copy of the ids then waits for nothing
    mark("prefill")
    logits, feats = prefill(model, prompt_ids, backend, plan, features=drafter.feature_layers)  # (1, V), (F, 1, L, H)
    root = logits[0].argmax(-1) if greedy else sample_from_probs(logits_to_probs(logits[0], temperature, top_p), gen)
    mark("draft_prefill")
    drafter.begin(feats[:, 0])
    mark("first_tree")
    st.put("tree_tokens", drafter.propose(root.reshape(1), feats[:, 0, -1:]))
    sync(device)
    t1 = time.perf_counter()

    if greedy:
        step = cap.step
    else:
        after = _acceptor(drafter, st, acceptance, temperature, top_p, posterior_threshold, posterior_alpha, gen, rng)

        def step():
            after(*cap.step())
    mark("decode")
    t2 = time.perf_counter()

    tokens: list[int] = []  # every token read back so far: the result, without reading ``out`` again
    accept: list[int] = []
    hit_eos = False
    # read back every check_every steps, but near the end only after as many steps as are still needed
    # at D1 tokens a step: steps past max_new_tokens are never run (they were up to check_every - 1)
    next_check = min(check_every, -(-max_new_tokens // D1))
    for i in range(max_steps):
        step()
        if i + 1 == next_check or i == max_steps - 1:
            n = min(int(st.n_gen), max_new_tokens)
            next_check = i + 1 + max(1, min(check_every, -(-(max_new_tokens - n) // D1)))
            new = st.out[len(tokens):n].tolist()
            cut = next((j for j, t in enumerate(new) if t in eos_set), None)
            if cut is not None:
                new, hit_eos = new[: cut + 1], True
            tokens += new
            last = hit_eos or len(tokens) >= max_new_tokens or i == max_steps - 1
            if last:
                # every step adds 1 to st.step, so after i + 1 steps it is i + 1: no read of it
                accept = st.accept[: i + 1].tolist()
                break
            if new:
                yield Chunk(row, new)
    sync(device)
    t3 = time.perf_counter()
    mark("teardown")
    # keep the steps that produced the returned tokens (the last one may be cut short)
    kept, total = [], 0
    for x in accept:
        if total >= len(tokens):
            break
        kept.append(x)
        total += x
    res = GenerationResult(tokens=tokens, num_new=len(tokens), prefill_s=t1 - t0, decode_s=t3 - t2,
                           capture_s=capture_s, stopped_on_eos=hit_eos, accept_lengths=kept)
    mark("end")
    yield Chunk(row, new, res)
