"""Sparse prefill of one layer whose heads MIX pattern kinds (vertical-slash of several budgets,
A-shape, block-sparse, dense — like the Qwen pack's layers) runs without a host sync on the GPU path
(fused vertical-slash estimation + Triton kernel; on CUDA tensors on a GPU, else through
TRITON_INTERPRET on the CPU): a sync per layer stops the CPU from queueing the next layer's launches
while the GPU works (issue 12/15). Its output still equals the float64 reference on the kept keys."""
import os

import pytest
import torch

from accel.kernels import HeadPattern, sparse_attention
from accel.kernels.index import kept_mask
from accel.kernels.reference import dense_causal_reference

from .conftest import TRITON_DEVICE as DEV
from .host_sync import NoHostSync, no_host_sync

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs Triton (TRITON_INTERPRET=1 on the CPU)")

MIXED = [HeadPattern("vertical_and_slash", 24, 40), HeadPattern("vertical_and_slash", 9, 70),
         HeadPattern("stream_llm", 32, 64), HeadPattern("block_sparse", 2),
         HeadPattern("vertical_and_slash", 24, 40), HeadPattern("dense"),
         HeadPattern("stream_llm", 16, 96), HeadPattern("vertical_and_slash", 40, 17)]


# the GPU runs the model's dtype, bf16 (its rounding sets the tolerance vs float64); the interpreter fp32
if DEV == "cuda":
    DTYPE, TOL = torch.bfloat16, dict(atol=2e-2, rtol=2e-2)
else:
    DTYPE, TOL = torch.float32, dict(atol=2e-5, rtol=1e-4)


def _qkv(N, Hq=8, Hkv=2, D=16, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return tuple(t.to(device, dtype) for t in (torch.randn(1, Hq, N, D, generator=g),
                                               torch.randn(1, Hkv, N, D, generator=g),
                                               torch.randn(1, Hkv, N, D, generator=g)))


def test_guard_sees_the_known_syncs():
    dh = torch.tensor([False, True], device=DEV)
    with NoHostSync() as g:
        torch.nonzero(dh)
        bool(dh.any())
    assert "aten::nonzero" in g.bad and "aten::_local_scalar_dense" in g.bad


@pytest.mark.parametrize("N", [200, 333])
def test_mixed_layer_has_no_host_sync_and_equals_float64(N):
    q, k, v = _qkv(N, dtype=DTYPE, device=DEV)
    sparse_attention(q, k, v, MIXED, impl="triton", fused=True, block_m=32, block_n=16)  # warm caches
    with no_host_sync() as g:
        out, idx = sparse_attention(q, k, v, MIXED, impl="triton", fused=True, block_m=32, block_n=16,
                                    return_index=True)
    assert not g.bad, g.bad
    ref = dense_causal_reference(q, k, v, mask=kept_mask(idx))
    torch.testing.assert_close(out.double(), ref, **TOL)


def test_one_topk_for_mixed_budgets_keeps_each_heads_own_top_k():
    """The fused path's single top-k at the largest budget, cut per head, equals a top-k per budget."""
    from accel.kernels.index import top_vertical_slash
    g = torch.Generator().manual_seed(1)
    col, diag = torch.rand(2, 5, 300, generator=g), torch.rand(2, 5, 300, generator=g)
    sizes = [(24, 40), (0, 7), (300, 1), (24, 40), (61, 299)]
    vs, ss = top_vertical_slash(col, diag, sizes, sort=False)
    vr, sr = top_vertical_slash(col, diag, sizes, sort=True)   # the reference: grouped by budget
    for got, ref in ((vs, vr), (ss, sr)):
        assert got.shape == ref.shape
        assert torch.equal(got.sort(-1).values, ref.sort(-1).values)   # same entries, -1 padding included


def test_static_parts_are_reused_not_rebuilt():
    """A-shape parts and block-sparse constants are built once per shape: the second layer call runs
    fewer ops, and its index equals a fresh build's."""
    from accel.kernels import build_index
    from accel.kernels import patterns as pt
    q, k, _ = _qkv(200)
    pats = [HeadPattern("stream_llm", 16, 48)] * 4 + [HeadPattern("block_sparse", 3)] * 4
    pt._STATIC_PARTS.clear()
    a = build_index(q, k, pats, 32, 16)
    b = build_index(q, k, pats, 32, 16)
    for f in ("block_count", "block_offset", "column_count", "column_index"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    b.block_count.zero_()          # an index owns its tensors: editing one leaves the cache intact
    c = build_index(q, k, pats, 32, 16)
    assert torch.equal(a.block_count, c.block_count)


def test_cached_static_parts_follow_head_positions():
    """Two layers with the same A-shape sizes on different heads get their own indexes (the caches
    key on head positions), each equal to the reference path's."""
    from accel.kernels import build_index
    q, k, _ = _qkv(160)
    a_pats = [HeadPattern("stream_llm", 16, 32)] * 2 + [HeadPattern("vertical_and_slash", 8, 20)] * 6
    b_pats = a_pats[2:] + a_pats[:2]
    for pats in (a_pats, b_pats, a_pats):
        idx = build_index(q, k, pats, 32, 16)
        for h, p in enumerate(pats):
            if p.name == "stream_llm":
                assert idx.column_count[:, h].eq(0).all() and idx.block_count[:, h, -1].item() > 0
            else:
                assert idx.column_count[:, h].sum().item() > 0
