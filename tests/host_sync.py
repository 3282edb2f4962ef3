"""A guard that fails on host syncs, shared by the tests that pin a sync-free path (sparse prefill).

`NoHostSync` records every op that makes the host wait for the device or whose output shape depends
on the data: ``aten._local_scalar_dense`` (.item(), int(t), bool(t)), nonzero, masked_select,
unique, repeat_interleave, boolean-mask indexing, copies to the host.  On the CPU nothing really
waits, but the same op on CUDA would, so the guard catches it in a CPU test.  `no_host_sync()` also
patches the Tensor methods that read data on the host (item, tolist, cpu, numpy) to raise at once,
naming the method, so the traceback points at the culprit."""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["NoHostSync", "no_host_sync", "SYNC_OPS"]

SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique",
            "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave", "aten::item"}


class NoHostSync(TorchDispatchMode):
    """Records (in ``.bad``) every op that would make the host wait for the device (or change shape
    with the data)."""

    def __init__(self):
        super().__init__()
        self.bad: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNC_OPS:
            self.bad.append(name)
        if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            idx = args[1] if len(args) > 1 else []
            if any(t is not None and t.dtype == torch.bool for t in idx):
                self.bad.append(name + " with a boolean mask")
        if name in ("aten::_to_copy", "aten::to", "aten::copy_"):
            dev = (kwargs or {}).get("device")
            if dev is not None and torch.device(dev).type == "cpu" and any(
                    isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
                self.bad.append(name + " to the host")
        return func(*args, **(kwargs or {}))


def _forbid(name):
    def f(*a, **k):
        raise AssertionError(f"host sync: Tensor.{name}")
    return f


@contextlib.contextmanager
def no_host_sync(methods=("item", "tolist", "cpu", "numpy")):
    """``with no_host_sync() as g: ...`` then ``assert not g.bad``; the Tensor host readers raise."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        for name in methods:
            mp.setattr(torch.Tensor, name, _forbid(name))
        with NoHostSync() as g:
            yield g
