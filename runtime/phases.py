"""Phase marks of a request, for profiling: ``mark(name)`` says "the request enters phase ``name``".

A no-op unless a hook is installed (``hooked(fn)``), so the request path pays one global read per
mark. Scripts time the phases (their hook syncs the device and reads the clock:
scripts/gpu/eagle_overhead.py), tests count the ops of each phase (tests/test_request_overhead.py).

Phases of a speculative request (runtime.speculative): setup, get_step (lookup or capture), reset,
prefill (base forward, the drafter's features included), draft_prefill (the drafter's own pass over
the prompt), first_tree, decode, teardown, end. A plain request (runtime.plain): setup, prefill,
get_step, decode, teardown, end.
"""

from __future__ import annotations

import contextlib

__all__ = ["mark", "hooked"]

_hook = None


def mark(name: str) -> None:
    if _hook is not None:
        _hook(name)


@contextlib.contextmanager
def hooked(fn):
    """``with hooked(lambda name: ...):`` every ``mark`` inside calls ``fn(name)``."""
    global _hook
    prev, _hook = _hook, fn
    try:
        yield fn
    finally:
        _hook = prev
