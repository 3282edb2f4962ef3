"""Decode modes and captured steps.

A decode *mode* says how a fixed-shape step runs; the engine fixes it once:
- ``exact`` (CUDA default): the batch-invariant kernels (``backend="exact"``) in a CUDA graph. Greedy
  Medusa, batched and single-prompt decoding give identical tokens in any dtype, and it is the
  fastest step measured on the H200 (SmolLM2 765 tok/s vs 470 for ``graph``, docs/results.md).
- ``graph``: cuBLAS + SDPA in a CUDA graph: the fallback where the exact kernels do not support the
  attention shape (``CompactLM.exact_supported``).
- ``eager``: no capture (CPU default; fp32 eager steps already agree there).
``inductor`` and ``compile`` were removed (never the fastest: 662 tok/s); asking for them fails with
a one-line error naming ``exact``.

``StepGraph`` captures a step whose inputs the caller mutates in place; ``get_step`` caches one per
key on the model (captured graphs alias the KV cache, so ``setup_cache`` drops them).
"""

from __future__ import annotations

import os

import torch

__all__ = ["MODES", "resolve_mode", "capture_mode", "backend_for", "StepGraph", "get_step", "sync"]

MODES = ("exact", "graph", "eager")
_REMOVED = {"inductor": "exact", "compile": "exact"}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def resolve_mode(compile, device, model=None) -> str:
    """None/True -> 'exact' on CUDA when the model's attention shape allows it, else 'graph'; 'eager'
    on a CPU. False -> 'eager'. Else one of ``MODES``."""
    dev = torch.device(device).type
    if compile is None or compile is True:
        if dev != "cuda":
            return "eager"
        return "exact" if model is None or model.exact_supported is None else "graph"
    if compile is False:
        return "eager"
    if compile in _REMOVED:
        raise ValueError(f"decode mode {compile!r} was removed (never the fastest on the H200): use "
                         f"{_REMOVED[compile]!r} (the default on CUDA) or 'graph'")
    if compile not in MODES:
        raise ValueError(f"compile must be None, a bool or one of {MODES}; got {compile!r}")
    if compile == "exact" and dev != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("compile='exact' runs Triton kernels: it needs a CUDA model (or TRITON_INTERPRET=1 on a CPU)")
    if compile == "exact" and model is not None and model.exact_supported:
        raise ValueError(f"compile='exact' cannot run this model: {model.exact_supported}; use 'graph'")
    if compile == "graph" and dev != "cuda":
        raise ValueError(f"compile='graph' needs a CUDA model; use compile=None or 'eager' on {device}")
    return compile


def capture_mode(mode: str, device) -> str:
    """How a step of ``mode`` is run: 'exact' is captured like 'graph' (eager on a CPU)."""
    if mode == "exact":
        return "graph" if torch.device(device).type == "cuda" else "eager"
    return mode


def backend_for(mode: str) -> str:
    """The model backend a decode mode runs on."""
    return "exact" if mode == "exact" else "sdpa"


class StepGraph:
    """A fixed-shape step ``fn(*inputs) -> outputs`` whose ``inputs`` the caller mutates in place.

    'graph': warmed up on a side stream, then captured once; ``__call__`` replays and returns the
    same static output tensors every time (consume them before the next call). 'eager': calls ``fn``.
    """

    def __init__(self, fn, inputs: list[torch.Tensor], mode: str):
        self.fn, self.inputs, self.mode = fn, inputs, mode
        if mode == "graph":
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    fn(*inputs)
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = fn(*inputs)

    def __call__(self):
        if self.mode == "graph":
            self.graph.replay()
            return self.outputs
        return self.fn(*self.inputs)


def get_step(model, key, fn, inputs_init: list[torch.Tensor], mode: str) -> StepGraph:
    """Cached StepGraph per (key, mode); ``inputs_init`` are copied into its static inputs."""
    step = model.step_graphs.get((key, mode))
    if step is None:
        step = StepGraph(fn, [t.clone() for t in inputs_init], mode)
        model.step_graphs[(key, mode)] = step
    else:
        for dst, src in zip(step.inputs, inputs_init):
            dst.copy_(src)
    return step
