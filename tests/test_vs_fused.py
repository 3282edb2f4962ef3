"""Fused vertical-slash estimation (kernels/vs_fused.py) against the torch reference (kernels/index.py):
same scores to fp32 rounding, the same top-k indices, the same index (block lists and gathered
columns) and kept keys, and the kernel on the fused index still equals float64 on its kept keys.
On CUDA tensors on a GPU; on the CPU Triton runs under TRITON_INTERPRET=1 (tests/conftest.py), so
shapes stay small."""
import os

import pytest
import torch

pytest.importorskip("triton")

from accel.kernels import HeadPattern, build_index, kept_mask  # noqa: E402
from accel.kernels.index import _top_sorted, vertical_slash_index, vertical_slash_scores  # noqa: E402
from accel.kernels.reference import dense_causal_reference  # noqa: E402
from accel.kernels.index import vertical_slash_scores_fused  # noqa: E402
from accel.kernels.vs_fused import vertical_slash_index_fused  # noqa: E402

from .conftest import TRITON_DEVICE as DEV  # noqa: E402

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

# the attention kernel's tl.dot rounds fp32 inputs to tf32 on the GPU (the interpreter multiplies in fp32)
KERNEL_TOL = 1e-2 if DEV == "cuda" else 1e-5


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """The torch reference's fp32 matmuls without tf32 (another test may have turned it on), as the
    fused estimation's fp32 dot ("ieee"): the same logits up to rounding, hence the same top-k."""
    if DEV == "cuda":
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def qk(B, Hq, Hkv, N, D, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, Hq, N, D, generator=g).to(DEV), torch.randn(B, Hkv, N, D, generator=g).to(DEV)


@pytest.mark.parametrize("B,Hq,Hkv,N,D,lq", [
    (1, 14, 2, 517, 64, 64),   # the 32K model's heads (Qwen2.5 class): head_dim 64, 14 q / 2 kv
    (2, 4, 2, 300, 64, 64),
    (1, 2, 1, 40, 16, 64),     # fewer keys than estimation queries
    (1, 4, 4, 200, 32, 32),    # last_q 32, no GQA
])
def test_fused_scores_and_topk_equal_reference(B, Hq, Hkv, N, D, lq):
    q, k = qk(B, Hq, Hkv, N, D, seed=N)
    col_r, diag_r = vertical_slash_scores(q, k, last_q=lq)
    col_f, diag_f = vertical_slash_scores_fused(q, k, last_q=lq)
    assert torch.allclose(col_f, col_r, rtol=1e-5, atol=1e-6)
    assert torch.allclose(diag_f, diag_r, rtol=1e-5, atol=1e-6)
    for v, s in ((40, 60), (10, 150), (N, N)):
        v, s = min(v, N), min(s, N)
        assert torch.equal(_top_sorted(col_f, v), _top_sorted(col_r, v))
        assert torch.equal(_top_sorted(diag_f, s), _top_sorted(diag_r, s))


def _same_index(a, b):
    assert torch.equal(a.block_count, b.block_count) and torch.equal(a.column_count, b.column_count)
    bc, cc = a.block_count.flatten(0, 2), a.column_count.flatten(0, 2)
    ao, bo = a.block_offset.flatten(0, 2), b.block_offset.flatten(0, 2)
    ac, bcol = a.column_index.flatten(0, 2), b.column_index.flatten(0, 2)
    for r in range(bc.numel()):
        assert torch.equal(ao[r, :bc[r]], bo[r, :bc[r]]), r
        assert torch.equal(ac[r, :cc[r]], bcol[r, :cc[r]]), r
    assert torch.equal(kept_mask(a), kept_mask(b))


@pytest.mark.parametrize("bm,bn", [(64, 64), (128, 64), (32, 16)])
def test_fused_build_index_equals_reference(bm, bn):
    q, k = qk(1, 14, 2, 431, 64, seed=bm + bn)
    pats = [HeadPattern("vertical_and_slash", 30, 80), HeadPattern("vertical_and_slash", 60, 200),
            HeadPattern("stream_llm", 16, 64), HeadPattern("vertical_and_slash", 5, 3)] * 3 \
        + [HeadPattern("block_sparse", 2), HeadPattern("dense")]
    ref = build_index(q, k, pats, bm, bn, fused=False)
    fus = build_index(q, k, pats, bm, bn, fused=True)
    _same_index(ref, fus)


def test_fused_conversion_cascaded_merges():
    """Diagonals in clusters a block apart: segments merge over several rounds of the fixpoint."""
    g = torch.Generator().manual_seed(1)
    N = 600
    for bm, bn in ((64, 64), (32, 16), (128, 64), (16, 16)):
        for _ in range(3):
            d = torch.cumsum(torch.randint(1, 2 * bn, (80,), generator=g), 0)
            d = d[d < N].view(1, 1, -1)
            vert = torch.randperm(N, generator=g)[:30].sort().values.view(1, 1, 30)
            from accel.kernels.index import SparseIndex
            vert, d = vert.to(DEV), d.to(DEV)
            a = SparseIndex(*vertical_slash_index(vert, d, N, bm, bn), n=N, block_m=bm, block_n=bn)
            b = SparseIndex(*vertical_slash_index_fused(vert, d, N, bm, bn), n=N, block_m=bm, block_n=bn)
            _same_index(a, b)


def test_fused_shapes_depend_only_on_length_and_budgets():
    """No host sync sizes an output: two inputs of one length give identically shaped indexes."""
    shapes = set()
    for seed in (0, 1):
        q, k = qk(1, 4, 2, 300, 32, seed)
        idx = build_index(q, k, [HeadPattern("vertical_and_slash", 20, 50)] * 4, 64, 64, fused=True)
        shapes.add((tuple(idx.block_offset.shape), tuple(idx.column_index.shape)))
    assert len(shapes) == 1


def test_kernel_on_fused_index_equals_float64():
    from accel.kernels.triton_sparse import sparse_attention_triton
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, h, 260, 64, generator=g).to(DEV) for h in (14, 2, 2))
    idx = build_index(q, k, [HeadPattern("vertical_and_slash", 24, 40)] * 14, 64, 64, fused=True)
    out = sparse_attention_triton(q, k, v, idx)
    ref = dense_causal_reference(q, k, v, mask=kept_mask(idx))
    assert ((out.double() - ref).norm() / ref.norm()).item() < KERNEL_TOL


def test_scratch_skew_variant_gives_identical_sums(monkeypatch):
    """Gather or scratch skew, whole (rows, 2BN) tile or two halves: bit-identical sums."""
    from accel.kernels import vs_fused
    q, k = qk(1, 4, 2, 290, 32, seed=2)
    a = vertical_slash_scores_fused(q, k)
    for gather, halves in ((False, True), (True, False), (False, False)):
        monkeypatch.setattr(vs_fused, "SKEW_GATHER", gather)
        monkeypatch.setattr(vs_fused, "SKEW_HALVES", halves)
        b = vertical_slash_scores_fused(q, k)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (gather, halves)


@pytest.mark.parametrize("rows_max", [64, 128, 512])
def test_scores_equal_reference_for_every_head_grouping(monkeypatch, rows_max):
    """One program per query head (64 rows), part of a GQA group, or the whole group padded to a power
    of two (7 heads -> 8, the padding head masked): the same sums as the reference."""
    from accel.kernels import vs_fused
    monkeypatch.setattr(vs_fused, "ROWS_MAX", rows_max)
    q, k = qk(1, 14, 2, 333, 32, seed=rows_max)
    col_r, diag_r = vertical_slash_scores(q, k)
    col_f, diag_f = vertical_slash_scores_fused(q, k)
    assert torch.allclose(col_f, col_r, rtol=1e-5, atol=1e-6)
    assert torch.allclose(diag_f, diag_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bm,bn", [(64, 64), (128, 64), (32, 16)])
def test_fused_conversion_bands_padding_and_no_verticals(bm, bn):
    """A long contiguous band (one segment of many tiles: slots found by binary search), scattered
    diagonals, padding entries (-1 and >= n, in any order) and V = 0 give the reference's index."""
    from accel.kernels.index import SparseIndex
    g = torch.Generator().manual_seed(bm + bn)
    N = 700
    band = torch.arange(0, 300)
    scattered = torch.randperm(N, generator=g)[:40]
    d = torch.cat([band, scattered, torch.tensor([-1, -1, N, N + 5])])
    d = d[torch.randperm(d.numel(), generator=g)].view(1, 1, -1)
    vert = torch.cat([torch.randperm(N, generator=g)[:50], torch.tensor([-1, N])]).view(1, 1, -1)
    d, vert = d.to(DEV), vert.to(DEV)
    for v in (vert, vert[..., :0]):
        a = SparseIndex(*vertical_slash_index(v, d, N, bm, bn), n=N, block_m=bm, block_n=bn)
        b = SparseIndex(*vertical_slash_index_fused(v, d, N, bm, bn), n=N, block_m=bm, block_n=bn)
        _same_index(a, b)


@pytest.mark.parametrize("loop_stages,ws", [(2, False), (3, True)])
def test_kernel_hopper_loop_options_equal_float64(loop_stages, ws):
    """The sweep's loop options (tl.range num_stages / warp_specialize) change scheduling only."""
    from accel.kernels.triton_sparse import sparse_attention_triton
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, h, 200, 32, generator=g).to(DEV) for h in (4, 2, 2))
    idx = build_index(q, k, [HeadPattern("vertical_and_slash", 20, 30)] * 4, 64, 64, fused=True)
    out = sparse_attention_triton(q, k, v, idx, loop_stages=loop_stages, warp_specialize=ws)
    ref = dense_causal_reference(q, k, v, mask=kept_mask(idx))
    assert ((out.double() - ref).norm() / ref.norm()).item() < KERNEL_TOL


def test_tile_table_drives_default_blocks(monkeypatch):
    """default_blocks reads TILE_TABLE per (head_dim, N); pattern caps still apply after it."""
    from accel.kernels import attention, triton_sparse

    class FakeQ:   # default_blocks only looks at is_cuda and the shape
        is_cuda = True

        def __init__(self, n, d):
            self.shape = (1, 4, n, d)
    monkeypatch.setattr(triton_sparse, "TILE_TABLE", {64: ((1000, (64, 64)), (None, (128, 64)))})
    vs = [HeadPattern("vertical_and_slash", 10, 20)]
    assert attention.default_blocks(vs, FakeQ(1000, 64)) == (64, 64)
    assert attention.default_blocks(vs, FakeQ(1001, 64)) == (128, 64)
    assert attention.default_blocks(vs, FakeQ(5000, 128)) == triton_sparse.DEFAULT_TILES
    assert attention.default_blocks([HeadPattern("block_sparse", 4)], FakeQ(5000, 128))[1] == 64
    assert triton_sparse.tiles_for(64, 31744) == (128, 64)
    monkeypatch.undo()   # the shipped table: the H200 sweep's winners for both head dims
    assert triton_sparse.tiles_for(128, 131072) == (128, 64) and triton_sparse.tiles_for(64, 31744) == (128, 64)


def test_fused_conversion_random_cases_equal_reference():
    """Random lengths, budgets (incl. S = 1 and V = 1), block shapes, heads with padded budgets."""
    from accel.kernels.index import SparseIndex
    g = torch.Generator().manual_seed(11)
    for case in range(24):
        bm, bn = [(64, 64), (128, 64), (32, 16), (16, 16), (128, 128)][case % 5]
        N = int(torch.randint(1, 400, (1,), generator=g))
        H = int(torch.randint(1, 4, (1,), generator=g))
        S = int(torch.randint(1, min(N, 90) + 1, (1,), generator=g))
        V = int(torch.randint(1, min(N, 40) + 1, (1,), generator=g))
        sl = torch.stack([torch.randperm(N, generator=g)[:S] for _ in range(H)])[None]
        vert = torch.stack([torch.randperm(N, generator=g)[:V] for _ in range(H)])[None]
        sl[..., torch.rand(sl.shape, generator=g) < 0.1] = -1      # a smaller budget's padding
        vert[..., torch.rand(vert.shape, generator=g) < 0.1] = -1
        sl, vert = sl.to(DEV), vert.to(DEV)
        a = SparseIndex(*vertical_slash_index(vert, sl, N, bm, bn), n=N, block_m=bm, block_n=bn)
        b = SparseIndex(*vertical_slash_index_fused(vert, sl, N, bm, bn), n=N, block_m=bm, block_n=bn)
        _same_index(a, b)


@pytest.mark.parametrize("B,N,bm,bn", [(2, 90, 32, 16), (1, 50, 64, 64), (1, 257, 128, 64)])
def test_layer_selection_budget_edges_equal_reference(B, N, bm, bn):
    """build_index's GPU path selects per head in `_vs_lists` (radix select, not torch.topk) and writes
    the layer's index in place: budgets of no vertical, more than N, one diagonal, every diagonal, the
    forced-key boundaries (30 / 100), N below last_q, batch 2, mixed with the other kinds."""
    q, k = qk(B, 8, 2, N, 32, seed=N + B)
    pats = [HeadPattern("vertical_and_slash", 0, 7), HeadPattern("vertical_and_slash", N + 5, 1),
            HeadPattern("vertical_and_slash", 3, N), HeadPattern("block_sparse", 1),
            HeadPattern("vertical_and_slash", 31, 101), HeadPattern("stream_llm", 0, 1), HeadPattern("dense"),
            HeadPattern("vertical_and_slash", 30, 100)]
    for p in (pats, [HeadPattern("vertical_and_slash", 0, 5)] * 8):
        _same_index(build_index(q, k, p, bm, bn, fused=False), build_index(q, k, p, bm, bn, fused=True))
