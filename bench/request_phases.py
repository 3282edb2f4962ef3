"""Where one request's time and work go, phase by phase (issue 14: per-request overhead).

The runtime marks the phases of a request (``runtime.phases``: setup, get_step, reset, prefill,
draft_prefill, first_tree, decode, teardown); this module hooks those marks and, per phase:
- ``PhaseTimer``: wall time, with a device sync at every mark (so a phase's GPU work is charged to it;
  the syncs add small bubbles, so the total is a little above an unhooked request's);
- ``PhaseOps``: the work the host dispatches, counted by a TorchDispatchMode: ``ops`` (aten ops that
  do work: views excluded; each is a kernel launch on CUDA), ``allocs`` (ops that return a new tensor:
  factories and out-of-place ops), ``syncs`` (host reads of device data: .item()/int()/bool(),
  .tolist()/.cpu()/.numpy(), data-dependent shapes such as nonzero, and explicit device syncs),
  ``host_tensors`` (tensors made from Python data: torch.tensor / as_tensor of a list), ``replays``
  (calls of a captured step, ``runtime.steps.StepGraph``: on CUDA one graph launch, so the ops inside
  are NOT counted, as on the GPU they are not dispatched) and ``captures`` (new StepGraphs).
On a CPU everything runs eagerly, but the counts are what the same request dispatches on CUDA.

``profile_request(engine, prompt, sampling, ops=..., timer=...)`` runs one request under both.
``python -m accel.bench.request_phases`` prints the breakdown of a second request (the first captures)
for plain, Medusa and EAGLE on the tiny random model of the tests (CPU, eager); the GPU version with the
real SmolLM2 is scripts/gpu/eagle_overhead.py.
"""

from __future__ import annotations

import collections
import contextlib
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..runtime import phases, plain, speculative
from ..runtime.steps import StepGraph

__all__ = ["PhaseOps", "PhaseTimer", "profile_request", "PHASES", "format_table", "main"]

PHASES = ("setup", "get_step", "reset", "prefill", "draft_prefill", "first_tree", "decode", "teardown")
FIELDS = ("ops", "allocs", "syncs", "host_tensors", "replays", "captures")

_VIEWS = {"aten::detach", "aten::view", "aten::_unsafe_view", "aten::alias", "aten::t", "aten::transpose",
          "aten::expand", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
          "aten::as_strided", "aten::reshape", "aten::split", "aten::unbind", "aten::split_with_sizes",
          "aten::chunk", "aten::_reshape_alias", "aten::view_as", "aten::expand_as", "aten::narrow",
          "aten::lift_fresh", "aten::_has_compatible_shallow_copy_type"}
_FACTORIES = {"aten::empty", "aten::empty_strided", "aten::zeros", "aten::ones", "aten::full", "aten::arange",
              "aten::scalar_tensor", "aten::empty_like", "aten::zeros_like", "aten::ones_like", "aten::full_like",
              "aten::randn", "aten::rand"}
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique",
             "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave"}


class PhaseOps(TorchDispatchMode):
    """Counts per phase (see the module docstring); ``counts[phase][field]``, ``by_op[phase][op]``.
    Use ``with ops.active():`` (not the bare mode): it also counts replays, captures, host readers and
    explicit syncs."""

    def __init__(self):
        super().__init__()
        self.phase = "setup"
        self.counts = collections.defaultdict(collections.Counter)
        self.by_op = collections.defaultdict(collections.Counter)
        self._inside = 0  # > 0 while a captured step runs (eagerly on a CPU): its ops are not dispatched on CUDA

    def mark(self, name: str) -> None:
        self.phase = name

    def add(self, field: str, n: int = 1) -> None:
        if not self._inside:
            self.counts[self.phase][field] += n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not self._inside:
            c = self.counts[self.phase]
            if name == "aten::lift_fresh":
                c["host_tensors"] += 1
            if name not in _VIEWS:
                c["ops"] += 1
                self.by_op[self.phase][name] += 1
                out_of_place = not name.endswith("_") and "out" not in (kwargs or {})
                if name in _FACTORIES or (out_of_place and name not in _SYNC_OPS and name != "aten::copy_"):
                    c["allocs"] += 1
            if name in _SYNC_OPS:
                c["syncs"] += 1
            elif name in ("aten::_to_copy", "aten::copy_") and any(
                    isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args) and \
                    torch.device((kwargs or {}).get("device", "cuda")).type == "cpu":
                c["syncs"] += 1  # a copy to the host
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def active(self):
        """The mode plus patches: StepGraph calls (one replay, inner ops skipped) and constructions
        (captures, inner ops skipped: warm-up and capture work is counted by ``captures``), the Tensor
        host readers that dispatch nothing on a CPU (tolist, numpy), and the loops' device syncs."""
        me = self
        call, init = StepGraph.__call__, StepGraph.__init__

        def replay(self_):
            me.add("replays")
            me._inside += 1
            try:
                return call(self_)
            finally:
                me._inside -= 1

        def capture(self_, *a, **k):
            me.add("captures")
            me._inside += 1
            try:
                return init(self_, *a, **k)
            finally:
                me._inside -= 1

        def reader(orig):
            def f(t, *a, **k):
                me.add("syncs")
                return orig(t, *a, **k)
            return f

        def counted_sync(orig):
            def f(device):
                me.add("syncs")
                return orig(device)
            return f

        with contextlib.ExitStack() as stack:
            mp = stack.enter_context(_patch())
            mp(StepGraph, "__call__", replay)
            mp(StepGraph, "__init__", capture)
            for name in ("tolist", "numpy"):
                mp(torch.Tensor, name, reader(getattr(torch.Tensor, name)))
            for mod in (speculative, plain):
                mp(mod, "sync", counted_sync(mod.sync))
            stack.enter_context(self)
            yield self


@contextlib.contextmanager
def _patch():
    undo = []

    def setattr_(obj, name, value):
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)
    try:
        yield setattr_
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)


class PhaseTimer:
    """Wall time per phase (seconds), the device synced at every mark."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.times: dict[str, float] = collections.defaultdict(float)
        self.phase, self.t = None, None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self.phase, self.t = "setup", time.perf_counter()

    def mark(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        if self.phase is not None:
            self.times[self.phase] += now - self.t
        self.phase, self.t = name, now

    def stop(self) -> None:
        self.mark("end")


def profile_request(engine, prompt: list[int], sampling, *, ops: PhaseOps | None = None,
                    timer: PhaseTimer | None = None):
    """One request under the phase hooks. -> its GenerationResult; the hooks hold the figures."""
    def on_mark(name):
        if timer is not None:
            timer.mark(name)
        if ops is not None:
            ops.mark(name)

    if timer is not None:
        timer.start()
    with contextlib.ExitStack() as stack:
        stack.enter_context(phases.hooked(on_mark))
        if ops is not None:
            stack.enter_context(ops.active())
        res = engine.generate([prompt], sampling)[0]
    if timer is not None:
        timer.stop()
    return res


def format_table(rows: dict[str, dict[str, dict]], fields=FIELDS) -> str:
    """rows: engine -> phase -> {field: value}; one line per (engine, phase) that did anything."""
    head = f"{'engine':10} {'phase':14} " + " ".join(f"{f:>12}" for f in fields)
    lines = [head, "-" * len(head)]
    for eng, per in rows.items():
        total = collections.Counter()
        for ph in list(PHASES) + sorted(set(per) - set(PHASES)):
            c = per.get(ph)
            if not c or not any(c.get(f) for f in fields):
                continue
            lines.append(f"{eng:10} {ph:14} " + " ".join(f"{_fmt(c.get(f, 0)):>12}" for f in fields))
            if ph != "decode":
                total.update({f: c.get(f, 0) for f in fields})
        lines.append(f"{eng:10} {'= not decode':14} " + " ".join(f"{_fmt(total[f]):>12}" for f in fields))
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _tiny_engines():
    """Plain, Medusa and EAGLE engines on the tests' tiny random model (CPU, eager)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..heads import MedusaConfig, MedusaHeads
    from ..runtime.drafters import EagleDrafter, MedusaDrafter
    from ..runtime.drafters.eagle import EagleConfig, EagleDraft
    from ..runtime.engine import Engine
    from ..runtime.model import CompactLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3, tie_word_embeddings=True)
    m = CompactLM.from_hf(LlamaForCausalLM(cfg).eval())
    heads = MedusaHeads(MedusaConfig(num_heads=3, num_layers=1, hidden_size=64, vocab_size=97, projection="own"),
                        m.output.weight).requires_grad_(False).eval()
    draft = EagleDraft(EagleConfig.for_base(m, intermediate_size=96), m.tok_embeddings, m.output.weight)
    draft = draft.init_weights(1, 0.3).eval().requires_grad_(False)
    return m, {"plain": Engine(m, None, mode=False), "medusa": Engine(m, MedusaDrafter(heads), mode=False),
               "eagle": Engine(m, EagleDrafter(draft, top_k=8, depth=5, num_nodes=48), mode=False)}


def main(argv=None):
    import argparse

    from ..runtime.engine import Sampling

    ap = argparse.ArgumentParser(description="Per-phase work of a second request (CPU, tiny random model)")
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--ops", action="store_true", help="also list each phase's aten ops")
    a = ap.parse_args(argv)
    m, engines = _tiny_engines()
    m.setup_cache(1, a.prompt_len + a.max_new_tokens + 256)
    prompt = [(7 * i + 3) % 97 for i in range(a.prompt_len)]
    rows, by_op = {}, {}
    with torch.no_grad():
        for name, eng in engines.items():
            eng.generate([prompt[: a.prompt_len // 2]], Sampling(8))  # the first request captures
            ops, timer = PhaseOps(), PhaseTimer("cpu")
            profile_request(eng, prompt, Sampling(a.max_new_tokens), ops=ops, timer=timer)
            rows[name] = {ph: {**ops.counts.get(ph, {}), "ms": round(1e3 * timer.times.get(ph, 0.0), 3)}
                          for ph in set(ops.counts) | set(timer.times)}
            by_op[name] = ops.by_op
    print(format_table(rows, ("ms",) + FIELDS))
    if a.ops:
        for name, per in by_op.items():
            for ph, c in per.items():
                if ph != "decode":
                    print(name, ph, dict(c.most_common()))


if __name__ == "__main__":
    main()
