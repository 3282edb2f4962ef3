"""Profile ONE captured EAGLE greedy step (the function runtime/speculative.py captures) on the CPU.

Counts aten ops per part of the step (verify / acceptance+bookkeeping / catch-up / draft steps /
selection) with a dispatch mode, and lists the top ops by count and by self CPU time (torch.profiler).
  python scripts/profile_eagle_step.py            # tiny random model
  python scripts/profile_eagle_step.py --pack /work/notes/eagle-pack-h200.safetensors --tree 8,5,48
"""
import argparse
import collections
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import accel.runtime.drafters.dynamic_tree as dt
import accel.runtime.drafters.eagle_decode as ed
import accel.runtime.drafters.eagle_drafter as edr
import accel.runtime.speculative as spec
import accel.runtime.verify as vf

_STACK = ["other"]
PARTS = ("verify", "accept", "advance", "catch_up", "draft_tree", "select")
_NO_KERNEL = {"aten::detach", "aten::view", "aten::_unsafe_view", "aten::alias", "aten::t", "aten::transpose",
              "aten::expand", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
              "aten::as_strided", "aten::reshape", "aten::split", "aten::chunk", "aten::empty", "aten::empty_like",
              "aten::empty_strided", "aten::to", "aten::lift_fresh", "aten::contiguous", "aten::flatten",
              "aten::resize_", "aten::result_type", "aten::is_nonzero", "aten::unbind", "aten::matmul",
              "aten::linear", "aten::dropout", "aten::_has_compatible_shallow_copy_type", "aten::expand_as",
              "aten::view_as", "aten::scalar_tensor", "aten::_reshape_alias", "aten::narrow"}


def launches(prof):
    """Top-level aten ops that do work (a launch on CUDA), per part: a composite op (rms_norm, sdpa,
    log_softmax) counts once, a view or a no-op cast not at all. -> Counter part -> n, Counter (part, op)."""
    per, ops = collections.Counter(), collections.Counter()
    seq = launches.seq = []

    def works(e):
        return e.name not in _NO_KERNEL or any(works(c) for c in e.cpu_children)

    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        p, top = e.cpu_parent, True
        while p is not None and top:
            top = not p.name.startswith("aten::")
            if p.name in PARTS:
                break
            p = p.cpu_parent
        if not top or not works(e):
            continue
        part = p.name if p is not None and p.name in PARTS else "other"
        per[part] += 1
        ops[(part, e.name)] += 1
        seq.append((part, e.name))
    return per, ops


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.c = collections.Counter()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name not in ("aten::detach", "aten::view", "aten::_unsafe_view", "aten::alias", "aten::t",
                        "aten::transpose", "aten::expand", "aten::permute", "aten::unsqueeze", "aten::squeeze",
                        "aten::select", "aten::slice", "aten::as_strided", "aten::reshape", "aten::split"):
            self.c[_STACK[-1]] += 1
            self.ops[(_STACK[-1], name)] += 1
        return func(*args, **(kwargs or {}))


def region(name, f):
    def g(*a, **k):
        _STACK.append(name)
        try:
            with torch.profiler.record_function(name):
                return f(*a, **k)
        finally:
            _STACK.pop()
    return g


def patch():
    spec.verify = region("verify", vf.verify)
    spec.accept_greedy = region("accept", vf.accept_greedy)
    spec.advance = region("advance", vf.advance)
    edr._draft_catch_up_static = region("catch_up", ed._draft_catch_up_static)
    edr._draft_tree = region("draft_tree", ed._draft_tree)
    dt.select_tree = region("select", dt.select_tree)
    if hasattr(dt, "_select_static"):
        pass


def build(args):
    from accel.runtime.model import CompactLM
    if args.pack:
        from accel.runtime.drafters.eagle_drafter import EagleDrafter
        from accel.runtime.models import load_model
        from accel.runtime.pack import load_pack
        lm = load_model("smollm2-135m", device="cpu")
        m = CompactLM.from_hf(lm.model)
        d = EagleDrafter.from_pack(load_pack(args.pack), m)
        prompt = lm.tokenizer.encode("Write a short poem about the sea and the wind.")
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        from accel.runtime.drafters import EagleDrafter
        from accel.runtime.drafters.eagle import EagleConfig, EagleDraft
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          initializer_range=0.3, tie_word_embeddings=True)
        m = CompactLM.from_hf(LlamaForCausalLM(cfg).eval())
        dr = EagleDraft(EagleConfig.for_base(m, intermediate_size=96), m.tok_embeddings, m.output.weight)
        d = EagleDrafter(dr.init_weights(1, 0.3).eval().requires_grad_(False))
        prompt = [1, 5, 7, 9, 11, 13, 2, 4]
    if args.dtype != "float32":
        m = m.to(dtype=getattr(torch, args.dtype)) if hasattr(m, "to") else m
        d.draft.to(dtype=getattr(torch, args.dtype))
        d.draft.attach_base(m.tok_embeddings, m.output.weight)
    k, D, N = args.tree
    d = type(d)(d.draft, top_k=k, depth=D, num_nodes=N)
    return m, d, prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack")
    ap.add_argument("--tree", default="8,5,48", type=lambda s: tuple(int(x) for x in s.split(",")))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sequence", default="", help="comma-separated parts whose launch-like ops to list in order")
    ap.add_argument("--dtype", default="float32", help="float32 | bfloat16 (bf16 shows the casts a GPU runs)")
    args = ap.parse_args()
    patch()
    m, d, prompt = build(args)
    steps = []
    orig = spec._step_fn

    def step_fn(*a, **k):
        fn = orig(*a, **k)
        steps.append(fn)
        return fn
    spec._step_fn = step_fn
    from accel.runtime.engine import Engine, Sampling
    out = Engine(m, d, mode=False).generate([prompt], Sampling(12))[0]
    print("tokens", out.tokens[:12], "accept", out.accept_lengths)
    fn = steps[-1]
    # the state is left after the request: one more step runs on it (shapes are static)
    with torch.no_grad():
        fn()
        cnt = Count()
        with cnt:
            fn()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    print("ops per part:", dict(cnt.c), "total", sum(cnt.c.values()))
    print(f"{'part':12s} {'op':40s} count")
    for (part, op), n in sorted(cnt.ops.items(), key=lambda x: -x[1])[: args.top]:
        print(f"{part:12s} {op:40s} {n}")
    per, ops = launches(prof)
    print("launch-like ops per part (composites once, views/no-op casts not):", dict(per), "total", sum(per.values()),
          "draft part", sum(v for k, v in per.items() if k in ("catch_up", "draft_tree", "select")))
    for (part, op), n in sorted(ops.items(), key=lambda x: -x[1])[: args.top]:
        print(f"{part:12s} {op:40s} {n}")
    for part in filter(None, args.sequence.split(",")):
        print(part, " ".join(o[6:] for p, o in launches.seq if p == part))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
