"""Host cost of one layer's sparse prefill on the GPU path, counted on the CPU: the torch ops that would
launch a kernel, the Triton launches and the tensors made from host data, per `sparse_attention` call
(index + kernel), for an all-vertical-slash layer and for the Qwen pack's mixed layers (14 q / 2 kv
heads, head_dim 64, the pack's patterns scaled to N, 128x64 tiles as on the H200).

Why it matters: on the H200 a 16K Qwen prefill was host-bound (results/experiments/
profile-prefill-qwen-synthetic-h200.json: ~89 launches and ~11 device copies per layer, ~2 ms of host
time per layer for ~0.5 ms of GPU work).  Counted here at N = 4096 before this budget: 21 torch ops
+ 7 Triton launches for an all-vertical-slash layer, 51 + 7 for the pack's first layer, 922 for its 24
layers, plus a tensor made from host data (the dense-head mask) per call; now 0 + 5, 7 + 6 and 175,
none from host data (scripts/gpu/index_host_cost.py times the host side on a GPU).

The counts do not depend on the data (the path makes no host sync: tests/test_prefill_sync.py), so
under TRITON_INTERPRET the Triton kernels are counted but not run (dry): the torch ops around them run
on uninitialised buffers, which changes no op.  On a GPU everything runs."""
from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from accel.kernels import HeadPattern, sparse_attention

from .host_sync import SYNC_OPS

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs Triton (TRITON_INTERPRET=1 on the CPU)")

PACK = Path(__file__).resolve().parents[1] / "results" / "qwen2.5-coder-0.5b-patterns-h200.safetensors"
# ops that launch nothing on a GPU: views, aliasing, allocation
NO_LAUNCH = {"aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::expand", "aten::transpose", "aten::t",
             "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::alias",
             "aten::detach", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::_reshape_alias",
             "aten::reshape", "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::chunk",
             "aten::narrow", "aten::lift_fresh"}
# tensors made from host data: torch.tensor / as_tensor of Python values, host->device copies
HOST_DATA = {"aten::lift_fresh", "aten::lift_fresh_copy", "aten::scalar_tensor"}


class Launches(TorchDispatchMode):
    """Counts what one call dispatches: torch ops that launch (``.ops``), Triton launches (``.triton``),
    tensors from host data (``.host``), host syncs (``.sync``)."""

    def __init__(self):
        super().__init__()
        self.ops, self.triton, self.host, self.sync = Counter(), Counter(), [], []
        self.inside = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            name = func._schema.name
            if name not in NO_LAUNCH:
                self.ops[name] += 1
            if name in HOST_DATA:
                self.host.append(name)
            if name in SYNC_OPS:
                self.sync.append(name)
            if name in ("aten::_to_copy", "aten::copy_") and any(
                    isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in args) and any(
                    isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args):
                self.host.append(name + " (host->device)")
            dev = (kwargs or {}).get("device")
            if name == "aten::_to_copy" and dev is not None and torch.device(dev).type != "cpu" \
                    and args and args[0].device.type == "cpu":
                self.host.append(name + " (host->device)")
        return func(*args, **(kwargs or {}))

    @property
    def launches(self) -> int:
        return sum(self.ops.values()) + sum(self.triton.values())


@contextlib.contextmanager
def counting(dry: bool):
    """A `Launches` for the block; every Triton kernel launch is counted (and with `dry` not run)."""
    from accel.kernels import vs_fused
    cls = type(vs_fused._vs_stats)   # InterpretedFunction under TRITON_INTERPRET, else JITFunction
    orig = cls.run
    mode = Launches()

    def run(self, *args, **kwargs):
        mode.triton[getattr(self, "fn", self).__name__] += 1
        if dry:
            return None
        mode.inside = True   # the interpreter's own tensor handling is not the layer's
        try:
            return orig(self, *args, **kwargs)
        finally:
            mode.inside = False

    cls.run = run
    try:
        with mode:
            yield mode
    finally:
        cls.run = orig


def pack_layers(n: int) -> list:
    """The Qwen pack's [layer][head] patterns scaled to n, as the runtime uses them."""
    from safetensors import safe_open

    from accel.kernels.scaling import scale_layers
    with safe_open(str(PACK), "pt") as f:
        meta = f.metadata()
    info = json.loads(meta["accel.patterns_info"])
    return scale_layers(json.loads(meta["accel.patterns"]), int(info.get("seq_len", 16384)), n)


def qkv(n: int, hq: int = 14, hkv: int = 2, d: int = 64):
    dev = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(n)
    return [torch.randn(1, h, n, d, generator=g).to(dev, dt) for h in (hq, hkv, hkv)]


def layer_launches(pats, n: int, block_m: int = 128, block_n: int = 64) -> Launches:
    """One layer's `sparse_attention` call after a warm-up call of the same shape."""
    q, k, v = qkv(n)
    dry = not q.is_cuda
    call = lambda: sparse_attention(q, k, v, pats, impl="triton", fused=True, block_m=block_m,  # noqa: E731
                                    block_n=block_n)
    with counting(dry):
        call()
    with counting(dry) as c:
        call()
    return c


ALL_VS = [HeadPattern("vertical_and_slash", 100, 300)] * 7 + [HeadPattern("vertical_and_slash", 1000, 1500)] * 7


@pytest.mark.parametrize("n", [4096, 4000])
def test_all_vertical_slash_layer(n):
    """Scores x2, selection + tiles, block lists, attention: 5 Triton launches and no torch op that
    launches (was 19 torch ops + 7 Triton launches: forced-key copies, 2 topk, budget masks, sorts,
    casts, memsets)."""
    c = layer_launches(ALL_VS, n)
    assert dict(c.ops) == {}, c.ops
    assert dict(c.triton) == {"_vs_stats": 1, "_vs_sums": 1, "_vs_lists": 1, "_block_lists": 1, "_sparse_attn_fwd": 1}
    assert not c.host and not c.sync, (c.host, c.sync)


@pytest.mark.parametrize("n", [4096, 4000])
def test_qwen_pack_layers(n):
    """Every layer of the Qwen pack: at most 13 launches (N a multiple of both tile sizes) or 19 (a
    ragged N: block-sparse pooling of the last partial block), 58 before for its first layer; the
    torch ops left are block-sparse's scores (pooling, one matmul, one where, one topk)."""
    layers = pack_layers(n)
    per_layer = []
    for pats in layers:
        c = layer_launches(pats, n)
        assert not c.host and not c.sync, (c.host, c.sync)
        assert set(c.ops) <= {"aten::sum", "aten::div", "aten::cat", "aten::bmm", "aten::where", "aten::topk"}, c.ops
        assert sum(c.triton.values()) <= 6, c.triton
        per_layer.append(c.launches)
    cap = 13 if n % 128 == 0 else 19
    assert max(per_layer) <= cap, per_layer
    print(f"N={n}: launches per layer {per_layer} (mean {sum(per_layer) / len(per_layer):.1f})")


def test_mixed_layer_with_dense_heads_makes_no_host_tensor():
    """A layer mixing every kind, dense heads included (their SDPA picks heads by a cached index):
    nothing made from host data on the second call, no sync."""
    pats = ([HeadPattern("vertical_and_slash", 24, 40), HeadPattern("stream_llm", 32, 64),
             HeadPattern("block_sparse", 2), HeadPattern("dense"), HeadPattern("vertical_and_slash", 9, 70),
             HeadPattern("stream_llm", 16, 96), HeadPattern("dense")] * 2)
    c = layer_launches(pats, 1000, 64, 64)
    assert not c.host and not c.sync, (c.host, c.sync)
    assert sum(c.triton.values()) == 6, c.triton   # scores x2, lists, block lists, fill, attention


def test_counter_sees_host_data_and_launches():
    """The counter itself: torch.tensor of a list is host data, an elementwise op is a launch."""
    with counting(dry=True) as c:
        t = torch.tensor([1, 2, 3])
        (t + 1).sum()
    assert c.host == ["aten::lift_fresh"] and c.ops == Counter({"aten::add": 1, "aten::sum": 1})


def test_fill_modes_agree():
    """index_fill imports nothing of ours: its mode numbers must be index's."""
    from accel.kernels import index, index_fill
    assert (int(index_fill._A_SHAPE), int(index_fill._SELECTED)) == (index.FILL_A_SHAPE, index.FILL_SELECTED)
    assert index.FILL_ZERO not in (index.FILL_A_SHAPE, index.FILL_SELECTED)
