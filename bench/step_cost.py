"""Step-cost projection of speculative decoding at a model's shape (issue 14: Llama-3-8B, random weights).

Speculative decoding is faster than plain decoding by ``accepted tokens per step / (spec step cost /
plain step cost)``. Timings depend on shapes, not weights, so on a random-weight model of the target
shape (``bench.synthetic``) this times, batch 1, after a prompt of ``context`` tokens:

- ``plain``: one decode step (1 token), captured as the engine captures it (``runtime.steps``);
- ``medusa``: one fused greedy step as the engine runs it: KV move + verify forward of the tree's N+1
  tokens + acceptance + the heads' next proposal (random heads of the model's width, shared lm_head);
  ``verify_ms`` is the verify forward + acceptance alone;
- ``eagle`` for each static (top_k, depth, N): verify + acceptance of an N+1-node tree of that depth,
  plus ``depth`` steps of a one-layer EAGLE-3 draft of the model's width (``EagleDraft``, random
  weights, the base's lm_head over the full vocabulary, top-k of its logits): the first step runs
  ``depth + 1`` accepted positions through ``fc`` (3H -> H), the other ``depth - 1`` steps ``top_k``
  tokens each. Each draft step is captured on its own; EAGLE-2's tree selection between steps (a sort
  over top_k^2 scores) is not timed, so the EAGLE cost here is a lower bound of a full step.

The projection for each is ``accept / ratio`` with ``ratio = step_ms / plain_ms``, for accepted
tokens per step 2..5 (counting the token the base adds; 1.0 = no draft token accepted), and the
acceptance a 2.5x speed-up needs: ``2.5 * ratio``.
"""

from __future__ import annotations

import torch

from .common import time_ms

__all__ = ["run_step_cost", "projection", "summary_lines"]


def projection(ratio: float, accepts=(2, 3, 4, 5), target: float = 2.5) -> dict:
    """Speed-ups at each acceptance for a spec/plain step-cost ``ratio``, and the acceptance for ``target``."""
    return {"step_over_plain": ratio, "speedup_at": {str(a): a / ratio for a in accepts},
            "accept_for_target": target * ratio, "target": target}


def _plain_step(model, mode, context):
    from ..runtime.plain import decode_one_token
    from ..runtime.steps import backend_for, capture_mode, get_step

    backend = backend_for(mode)
    tok = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    pos = torch.full((1, 1), context, dtype=torch.long, device=model.device)
    step = get_step(model, ("plain", 1, backend), lambda t, p: decode_one_token(model, t, p, backend),
                    [tok, pos], capture_mode(mode, model.device))
    return step


def _spec_step(model, mode, drafter, context, fused: bool):
    """A captured verify (+ acceptance, + the drafter's proposal when ``fused``) step on a static state
    whose prefix starts at ``context``; returns (step, reset) — ``reset`` puts the state back."""
    from ..runtime.steps import StepGraph, backend_for, capture_mode
    from ..runtime.verify import SpecState, accept_greedy, advance, verify

    backend, tb = backend_for(mode), drafter.tree
    st = SpecState(tb, 4096, 4096, model.device)
    feats = drafter.feature_layers

    def fn():
        lg, hd = verify(model, backend, tb, st, feats)
        best, a, nxt = accept_greedy(tb, st.tree_tokens, lg)
        if fused:
            advance(drafter, tb, st, hd, best, a, nxt)
        return ()

    def reset():
        st.reset(context)

    reset()
    step = StepGraph(fn, [], capture_mode(mode, model.device))
    reset()
    return step, reset


def _timed_spec(model, mode, drafter, context, fused, reps, warmup):
    step, reset = _spec_step(model, mode, drafter, context, fused)

    def run():
        step()
    reset()
    ms = time_ms(run, warmup=warmup, rep=reps, device=model.device)
    reset()
    return ms


def _eagle_draft_steps(model, mode, top_k: int, depth: int, context: int, reps: int, warmup: int, log=print):
    """(first draft step ms, later draft step ms, how they ran) of a one-layer EAGLE-3 draft of the model's width."""
    from ..runtime.drafters.eagle import EagleConfig, EagleDraft
    from ..runtime.steps import StepGraph, capture_mode

    dev, dt = model.device, model.dtype
    cfg = EagleConfig.for_base(model)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        with torch.device(dev):
            draft = EagleDraft(cfg, model.tok_embeddings, model.output.weight)
    finally:
        torch.set_default_dtype(old)
    for p in draft.parameters():  # random weights of a sane scale (timings do not depend on values)
        torch.nn.init.normal_(p, std=0.02)
    draft = draft.eval().requires_grad_(False)
    S = context + 2 * (depth + 1) * top_k + 64
    cache = draft.new_cache(1, S)
    H = cfg.hidden_size
    cm = capture_mode(mode, dev)

    def make(T: int, width: int):
        hidden = torch.randn(1, T, width, device=dev, dtype=dt) * 0.02
        ids = torch.randint(0, cfg.vocab_size, (1, T), device=dev)
        pos = context + torch.arange(T, device=dev)[None]  # (1, T)
        mask = (torch.arange(S, device=dev)[None, None, None] < context + T).expand(1, 1, T, S).contiguous()  # (1, 1, T, S)

        def fn():
            logits, h_out = draft(hidden, ids, pos, cache, pos, mask)
            return logits[0].topk(top_k, dim=-1).indices, h_out  # the next candidates per drafted token
        with torch.no_grad():
            try:
                return StepGraph(fn, [], cm), cm
            except RuntimeError as e:  # the draft module is eager code: time it eagerly rather than fail
                log(f"eagle draft step not capturable ({str(e).splitlines()[0][:120]}): timed eagerly")
                return StepGraph(fn, [], "eager"), "eager"

    with torch.no_grad():
        s1, m1 = make(depth + 1, 3 * H)
        first = time_ms(s1, warmup=warmup, rep=reps, device=dev)
        s2, m2 = make(top_k, H)
        later = time_ms(s2, warmup=warmup, rep=reps, device=dev)
    del draft, cache, s1, s2
    return first, later, m1 if m1 == m2 else f"{m1}/{m2}"


@torch.no_grad()
def run_step_cost(synthetic: str = "llama-3-8b", *, layers: int | None = None, device=None, dtype=None,
                  mode: str | None = None, context: int = 512, medusa_heads: int = 4, medusa_nodes: int = 63,
                  eagle=((8, 5, 48), (10, 6, 60)), accepts=(2, 3, 4, 5), target: float = 2.5, reps: int = 20,
                  warmup: int = 3, log=print) -> dict:
    """-> a JSON-ready dict: plain step, Medusa step, EAGLE steps (ms) and their projections."""
    from ..runtime.drafters.medusa import MedusaDrafter
    from ..runtime.model import CompactLM
    from ..runtime.models import pick_device, pick_dtype
    from ..runtime.steps import resolve_mode
    from ..runtime.tree import TreeBuffers, build_tree, default_accuracies, default_tree
    from .decode import random_heads
    from .synthetic import build_synthetic

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    hf = build_synthetic(synthetic, device=dev, dtype=dt, max_position_embeddings=max(8192, 2 * context),
                         num_hidden_layers=layers)
    model = CompactLM.from_hf(hf)
    del hf
    mode = resolve_mode(mode, dev, model)
    max_d1 = max([medusa_heads] + [d for _, d, _ in eagle]) + 1
    max_n1 = max([medusa_nodes] + [n for _, _, n in eagle]) + 1
    model.setup_cache(1, context + (reps + warmup + 4) * max_d1 + max_n1 + 64)
    ids = torch.randint(3, model.vocab_size, (1, context), device=dev)
    pos = torch.arange(context, device=dev)[None]
    from ..runtime.attention_meta import AttentionMeta
    from ..runtime.steps import backend_for

    model(ids, AttentionMeta.prompt(pos), backend=backend_for(mode), last_only=True)  # a real prefix to attend to
    out = dict(model=f"synthetic:{synthetic}" + (f" ({layers} layers)" if layers else ""), dtype=str(dt),
               device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", mode=mode, context=context,
               reps=reps, accepts=list(accepts), target=target)

    plain = _plain_step(model, mode, context)
    out["plain_step_ms"] = plain_ms = time_ms(plain, warmup=warmup, rep=reps, device=dev)
    log(f"plain step: {plain_ms:.3f} ms")

    heads = random_heads(model, medusa_heads)
    tree = default_tree(medusa_heads, medusa_nodes)
    drafter = MedusaDrafter(heads, tree, device=dev)
    verify_ms = _timed_spec(model, mode, drafter, context, False, reps, warmup)
    step_ms = _timed_spec(model, mode, drafter, context, True, reps, warmup)
    out["medusa"] = dict(heads=medusa_heads, tree_tokens=drafter.tree.num_nodes, verify_ms=verify_ms,
                         step_ms=step_ms, **projection(step_ms / plain_ms, accepts, target))
    log(f"medusa ({drafter.tree.num_nodes} tree tokens): verify {verify_ms:.3f} ms, step {step_ms:.3f} ms "
        f"= {step_ms / plain_ms:.2f} plain steps")
    del heads, drafter

    rows = []
    for top_k, depth, n in eagle:
        # a static tree of n nodes up to ``depth`` (EAGLE-2 picks a new one each step: same sizes)
        paths = build_tree(default_accuracies(depth, top_k), n)
        tb = TreeBuffers(paths, topk=top_k, device=dev)
        stub = _TreeOnly(tb)
        v_ms = _timed_spec(model, mode, stub, context, False, reps, warmup)
        first, later, how = _eagle_draft_steps(model, mode, top_k, depth, context, reps, warmup, log)
        draft_ms = first + (depth - 1) * later
        total = v_ms + draft_ms
        rows.append(dict(top_k=top_k, depth=depth, nodes=n, tree_tokens=tb.num_nodes, tree_depth=tb.num_heads,
                         verify_ms=v_ms, draft_first_ms=first, draft_step_ms=later, draft_ms=draft_ms, draft_run=how,
                         step_ms=total, **projection(total / plain_ms, accepts, target)))
        log(f"eagle top_k={top_k} depth={depth} N={n}: verify {v_ms:.3f} ms + draft {draft_ms:.3f} ms "
            f"({first:.3f} + {depth - 1} x {later:.3f}) = {total / plain_ms:.2f} plain steps")
    out["eagle"] = rows
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


class _TreeOnly:
    """Just enough of a drafter for a verify-only step over a fixed tree."""

    feature_layers = (-1,)

    def __init__(self, tb):
        self.tree = tb


def summary_lines(res: dict) -> list[str]:
    """The projection table as text lines (the script prints them)."""
    accepts = res["accepts"]
    head = f"{'drafter':<28}{'step/plain':>11}" + "".join(f"{'@' + str(a):>8}" for a in accepts) + \
        f"{'accept for ' + str(res['target']) + 'x':>18}"
    lines = [f"{res['model']} ({res['dtype']}, {res['device']}, {res['mode']}, context {res['context']}): "
             f"plain step {res['plain_step_ms']:.3f} ms", head]
    entries = [(f"medusa N+1={res['medusa']['tree_tokens']}", res["medusa"])] + \
        [(f"eagle k={e['top_k']} d={e['depth']} N={e['nodes']}", e) for e in res["eagle"]]
    for name, e in entries:
        lines.append(f"{name:<28}{e['step_over_plain']:>11.2f}" +
                     "".join(f"{e['speedup_at'][str(a)]:>7.2f}x" for a in accepts) +
                     f"{e['accept_for_target']:>18.2f}")
    return lines

