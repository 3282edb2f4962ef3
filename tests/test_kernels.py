"""Sparse-prefill kernels: patterns, index builders, both implementations vs float64, cost model.

The Triton implementation runs on CUDA tensors on a GPU, else through TRITON_INTERPRET=1 on the CPU
(tests/conftest.py), so sizes stay tiny.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from accel.kernels import (HeadPattern, build_index, estimate_block_sparse, estimate_vertical_slash,
                           kept_mask, kernel_cost, pattern_cost, sparse_attention,
                           sparse_attention_reference, from_minference, to_minference)
from accel.kernels.index import SLASH_KEEP, VERTICAL_KEEP, a_shape_index, vertical_slash_index
from accel.kernels.reference import dense_causal_reference

HAS_TRITON = True
try:
    import triton  # noqa: F401
except Exception:  # pragma: no cover
    HAS_TRITON = False

from .conftest import TRITON_DEVICE

IMPLS = ["reference"] + (["triton"] if HAS_TRITON and (TRITON_DEVICE == "cuda"
                                                       or os.environ.get("TRITON_INTERPRET") == "1") else [])
# relative error vs float64 on the kept keys: tl.dot rounds fp32 inputs to tf32 on the GPU
TOL = {"reference": 1e-5, "triton": 1e-2 if TRITON_DEVICE == "cuda" else 1e-5}


def device_of(impl):
    """Where an implementation runs in these tests: Triton on TRITON_DEVICE, the reference on the CPU."""
    return TRITON_DEVICE if impl == "triton" else "cpu"


def rand_qkv(B, Hq, Hkv, N, D, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, N, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, N, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, N, D, generator=g, dtype=dtype)
    return q.to(device), k.to(device), v.to(device)


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


# ------------------------------------------------------------------ patterns
def test_pattern_validation_and_minference_roundtrip():
    p = HeadPattern("vertical_and_slash", 1000, 6096, 0.9)
    assert p.to_list() == ["vertical_and_slash", 1000, 6096, 0.9]
    assert HeadPattern("a_shape", 64, 4096).name == "stream_llm"
    with pytest.raises(ValueError, match="unknown pattern"):
        HeadPattern("nope", 1, 1)
    with pytest.raises(ValueError, match=">= 0"):
        HeadPattern("stream_llm", -1, 10)
    with pytest.raises(ValueError, match="local window"):
        HeadPattern("stream_llm", 10, 0)
    with pytest.raises(ValueError, match="top-k"):
        HeadPattern("block_sparse", 0, 0)
    cfg = [{"0": ["vertical_and_slash", 1000, 6096, 0.5], "1": ["stream_llm", 64, 4096, 0.1]},
           {"1": ["dense", 0, 0, 0.0], "0": ["block_sparse", 8, 0, 0.2]}]
    layers = from_minference(cfg)
    assert [p.name for p in layers[1]] == ["block_sparse", "dense"]
    assert from_minference(to_minference(layers)) == layers


# ------------------------------------------------------------------ index structure
def _check_index_invariants(index, N):
    B, H, M = index.shape
    for b in range(B):
        for h in range(H):
            if index.dense_heads[h]:
                continue
            for m in range(M):
                r0, r1 = m * index.block_m, min(N, (m + 1) * index.block_m)
                nb = int(index.block_count[b, h, m])
                offs = index.block_offset[b, h, m, :nb].tolist()
                covered = set()
                for o in offs:
                    keys = {j for j in range(o, o + index.block_n) if 0 <= j < N}
                    assert keys, "a kept block holds no real key"
                    assert not (keys & covered), "kept blocks overlap (double counting)"
                    covered |= keys
                    assert o <= r1 - 1, "block entirely in the future"
                nc = int(index.column_count[b, h, m])
                cols = index.column_index[b, h, m, :nc].tolist()
                assert cols == sorted(set(cols)) and not (set(cols) & covered)
                assert all(0 <= c <= r1 - 1 for c in cols)
    mask = kept_mask(index, N)
    assert bool(mask.diagonal(dim1=-2, dim2=-1).all()), "every query must see itself"


@pytest.mark.parametrize("N,bm,bn", [(150, 32, 16), (200, 16, 16), (97, 32, 32), (64, 64, 64)])
def test_index_invariants_all_patterns(N, bm, bn):
    q, k, _ = rand_qkv(2, 4, 2, N, 16, seed=N + bm)
    pats = [HeadPattern("vertical_and_slash", 12, 24), HeadPattern("stream_llm", 8, 40),
            HeadPattern("block_sparse", 2), HeadPattern("vertical_and_slash", 5, 3)]
    idx = build_index(q, k, pats, block_m=bm, block_n=bn)
    _check_index_invariants(idx, N)


def test_a_shape_superset_of_textbook_and_block_rounding():
    N, sink, win, bs = 200, 10, 40, 16
    cnt, off = a_shape_index(N, sink, win, bs, bs)
    q, k, _ = rand_qkv(1, 1, 1, N, 16, 0)
    idx = build_index(q, k, [HeadPattern("stream_llm", sink, win)], block_m=bs, block_n=bs)
    mask = kept_mask(idx)[0, 0]
    r = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    textbook = ((j < sink) | (j > r - win)) & (j <= r)
    assert bool((mask | ~textbook).all()), "A-shape must keep its textbook keys"
    extra = mask & ~textbook  # rounding adds < one block per side per row
    assert int(extra.sum(1).max()) < 2 * bs


def _brute_vs(q, k, last_q):
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    kk = k.double().repeat_interleave(G, 1)
    rows = torch.arange(N - last_q, N)
    s = q.double()[:, :, rows] @ kk.transpose(-1, -2) / math.sqrt(D)
    s = s.masked_fill(torch.arange(N)[None, :] > rows[:, None], float("-inf"))
    p = s.softmax(-1)
    col = p.sum(2)
    diag = torch.zeros(B, Hq, N, dtype=torch.float64)
    for i, r in enumerate(rows.tolist()):
        for j in range(r + 1):
            diag[:, :, r - j] += p[:, :, i, j]
    return col, diag


def test_estimate_vertical_slash_matches_bruteforce():
    N, v, s, lq = 180, 40, 60, 32
    q, k, _ = rand_qkv(2, 4, 2, N, 16, seed=7)
    vert, sl = estimate_vertical_slash(q, k, v, s, last_q=lq)
    col, diag = _brute_vs(q, k, lq)
    col[..., :VERTICAL_KEEP] = 1e9
    diag[..., :min(SLASH_KEEP, s)] = 1e9 + torch.arange(min(SLASH_KEEP, s), 0, -1, dtype=torch.float64)
    ev = col.topk(v, -1).indices.sort(-1).values
    es = diag.topk(s, -1).indices.sort(-1).values
    assert torch.equal(vert, ev)
    assert torch.equal(sl, es)
    assert bool((vert[..., :VERTICAL_KEEP] == torch.arange(VERTICAL_KEEP)).all())
    assert bool((sl == torch.arange(s)).all())  # s < SLASH_KEEP: exactly the s nearest diagonals


def test_vertical_slash_kept_set_contains_chosen_columns_and_diagonals():
    N, bm, bn = 190, 32, 16
    q, k, _ = rand_qkv(1, 2, 1, N, 16, seed=3)
    g = torch.Generator().manual_seed(5)
    vert = torch.randperm(N, generator=g)[:20].sort().values.expand(1, 2, 20)
    sl = torch.cat([torch.arange(4), torch.randperm(N - 4, generator=g)[:9] + 4]).sort().values.expand(1, 2, 13)
    idx_parts = vertical_slash_index(vert, sl, N, bm, bn)
    from accel.kernels.index import SparseIndex
    idx = SparseIndex(*idx_parts, n=N, block_m=bm, block_n=bn)
    _check_index_invariants(idx, N)
    mask = kept_mask(idx)[0, 0]
    r = torch.arange(N)[:, None]
    j = torch.arange(N)[None, :]
    want = (torch.isin(j, vert[0, 0]) | torch.isin(r - j, sl[0, 0])) & (j <= r)
    assert bool((mask | ~want).all())
    # an isolated diagonal costs one block per query block (arbitrary block starts), not two
    one = vertical_slash_index(torch.zeros(1, 1, 0, dtype=torch.long), torch.tensor([[[0, 100]]]), N, 32, 32)
    assert int(one[0][0, 0, -1]) == 2


def test_block_sparse_estimate_matches_bruteforce():
    N, bm, bn, topk = 200, 32, 16, 3
    q, k, _ = rand_qkv(1, 4, 2, N, 16, seed=11)
    cnt, sel = estimate_block_sparse(q, k, topk, bm, bn)
    M, Nb = math.ceil(N / bm), math.ceil(N / bn)
    for h in range(4):
        kh = k[0, h // 2].double()
        for m in range(M):
            r0, r1 = m * bm, min(N, (m + 1) * bm)
            qp = q[0, h, r0:r1].double().mean(0)
            sc = []
            for jb in range(Nb):
                if jb * bn > r1 - 1:
                    continue
                kp = kh[jb * bn:min(N, (jb + 1) * bn)].mean(0)
                forced = jb * bn + bn - 1 >= r0
                sc.append((float("inf") if forced else float(qp @ kp), jb))
            nf = sum(1 for s_, _ in sc if s_ == float("inf"))
            want = sorted(j for _, j in sorted(sc, reverse=True)[:max(min(topk, len(sc)), nf)])
            c = int(cnt[0, h, m])
            assert sel[0, h, m, :c].tolist() == want


# ------------------------------------------------------------------ numerics vs float64
CASES = [  # B, Hq, Hkv, N, D, block_m, block_n
    (1, 4, 4, 128, 16, 32, 32),
    (2, 4, 2, 150, 16, 32, 16),   # ragged last block, GQA 2
    (1, 8, 2, 200, 32, 16, 16),   # GQA 4, D 32
    (2, 2, 1, 177, 32, 32, 32),   # N not a multiple of anything
    (1, 4, 1, 260, 64, 64, 64),   # D 64 with the default 64 blocks
]
PATTERNS = {
    "vertical_and_slash": HeadPattern("vertical_and_slash", 16, 20),
    "stream_llm": HeadPattern("stream_llm", 8, 24),
    "block_sparse": HeadPattern("block_sparse", 2),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("case", CASES)
def test_pattern_matches_float64_masked_dense(impl, pattern, case):
    B, Hq, Hkv, N, D, bm, bn = case
    q, k, v = rand_qkv(B, Hq, Hkv, N, D, seed=hash((pattern, case)) % 10_000, device=device_of(impl))
    out, idx = sparse_attention(q, k, v, PATTERNS[pattern], impl=impl, return_index=True,
                                block_m=bm, block_n=bn)
    assert torch.isfinite(out).all()
    mask = kept_mask(idx)
    causal_counts = torch.arange(1, N + 1, device=mask.device)
    assert bool((mask.sum(-1) < causal_counts).any()), "test budget should actually drop keys"
    ref = dense_causal_reference(q, k, v, mask=mask)
    assert rel_err(out, ref) < TOL[impl]


@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_layer_one_index_with_dense_heads(impl):
    B, Hq, Hkv, N, D = 2, 8, 2, 150, 16
    q, k, v = rand_qkv(B, Hq, Hkv, N, D, seed=99, device=device_of(impl))
    pats = [HeadPattern("vertical_and_slash", 8, 12), HeadPattern("stream_llm", 4, 20),
            HeadPattern("block_sparse", 1), HeadPattern("dense"),
            HeadPattern("stream_llm", 16, 16), HeadPattern("dense"),
            HeadPattern("vertical_and_slash", 30, 40), HeadPattern("block_sparse", 3)]
    out, idx = sparse_attention(q, k, v, pats, impl=impl, return_index=True, block_m=32, block_n=16)
    assert idx.dense_heads.tolist() == [p.name == "dense" for p in pats]
    ref = dense_causal_reference(q, k, v, mask=kept_mask(idx))
    assert rel_err(out, ref) < TOL[impl]
    dense_ref = dense_causal_reference(q, k, v)
    for h in (3, 5):
        assert rel_err(out[:, h], dense_ref[:, h]) < TOL[impl]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pattern", [HeadPattern("vertical_and_slash", 200, 200),
                                     HeadPattern("stream_llm", 0, 200),
                                     HeadPattern("block_sparse", 100)])
def test_keep_everything_equals_causal_sdpa(impl, pattern):
    B, Hq, Hkv, N, D = 2, 4, 2, 150, 32
    q, k, v = rand_qkv(B, Hq, Hkv, N, D, seed=1, device=device_of(impl))
    out, idx = sparse_attention(q, k, v, pattern, impl=impl, return_index=True, block_m=32, block_n=32)
    assert bool((kept_mask(idx) == torch.ones(N, N, dtype=torch.bool, device=q.device).tril()).all())
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_err(out, sdpa.double()) < TOL[impl]


def test_dense_only_is_sdpa():
    q, k, v = rand_qkv(1, 4, 2, 100, 16, seed=2)
    out = sparse_attention(q, k, v, HeadPattern("dense"))
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(out, sdpa)


def test_reference_chunking_is_invariant():
    q, k, v = rand_qkv(1, 4, 2, 160, 16, seed=4)
    idx = build_index(q, k, [HeadPattern("vertical_and_slash", 10, 20)] * 4, block_m=32, block_n=32)
    a = sparse_attention_reference(q, k, v, idx, chunk_rows=32)
    b = sparse_attention_reference(q, k, v, idx, chunk_rows=160)
    assert torch.allclose(a, b, atol=1e-6)


def test_float64_reference_path_and_custom_scale():
    q, k, v = rand_qkv(1, 2, 1, 90, 16, seed=8, dtype=torch.float64)
    idx = build_index(q, k, [HeadPattern("stream_llm", 4, 20)] * 2, block_m=16, block_n=16)
    out = sparse_attention_reference(q, k, v, idx, scale=0.3)
    ref = dense_causal_reference(q, k, v, scale=0.3, mask=kept_mask(idx))
    assert out.dtype == torch.float64 and rel_err(out, ref) < 1e-12


# ------------------------------------------------------------------ cost model
@pytest.mark.parametrize("N", [200, 257, 640])
def test_pattern_cost_exact_for_static_patterns(N):
    D, bs = 32, 32
    q, k, _ = rand_qkv(1, 1, 1, N, D, seed=N)
    for p in [HeadPattern("stream_llm", 40, 100), HeadPattern("stream_llm", 0, 33),
              HeadPattern("block_sparse", 3), HeadPattern("dense")]:
        idx = build_index(q, k, [p], block_m=bs, block_n=bs)
        assert kernel_cost(idx, N, D) == pattern_cost(p, N, D, block=bs), p


def test_vertical_slash_cost_bounds():
    N, D, bs = 640, 32, 32
    q, k, _ = rand_qkv(1, 1, 1, N, D, seed=0)
    p = HeadPattern("vertical_and_slash", 40, 64)
    idx = build_index(q, k, [p], block_m=bs, block_n=bs)
    real = kernel_cost(idx, N, D)
    assert real <= pattern_cost(p, N, D, block=bs, mode="upper")
    dense = pattern_cost(HeadPattern("dense"), N, D, block=bs)
    assert real < dense
    # s < SLASH_KEEP: the slashes are exactly the nearest band, so the expected model is exact on
    # slashes and only guesses where the verticals sit (it assumes all of them left of the band)
    exp = pattern_cost(p, N, D, block=bs)
    assert 0.8 * real <= exp <= 1.25 * real


def test_index_density_keep_everything_is_one():
    q, k, _ = rand_qkv(1, 2, 1, 256, 16, seed=0)
    idx = build_index(q, k, [HeadPattern("block_sparse", 100)] * 2, block_m=32, block_n=32)
    assert abs(idx.density() - 1.0) < 1e-9


def test_mixed_vertical_slash_sizes_equal_per_head_indexes():
    """One shared softmax for a layer's vertical-slash heads gives each head exactly the keys its own
    estimation would keep, whatever its budget (and block-sparse heads' top-k stay their own)."""
    from accel.kernels import HeadPattern, build_index, kept_mask

    torch.manual_seed(3)
    q, k = torch.randn(1, 4, 200, 16), torch.randn(1, 2, 200, 16)
    pats = [HeadPattern("vertical_and_slash", 40, 60), HeadPattern("vertical_and_slash", 10, 20),
            HeadPattern("block_sparse", 2, 0), HeadPattern("vertical_and_slash", 0, 5)]
    joint = kept_mask(build_index(q, k, pats, 32, 32), 200)
    for h, p in enumerate(pats):
        alone = kept_mask(build_index(q, k, [p] * 4, 32, 32), 200)
        assert torch.equal(joint[:, h], alone[:, h]), (h, p)


def test_dense_heads_sdpa_partial_equals_dense_float64():
    """Mixed layer: the dense heads (written by dense_heads_sdpa, FlashAttention-first on CUDA to avoid
    cuDNN's per-length plan build) equal dense causal attention; other heads are left untouched."""
    import torch
    from accel.kernels.dense import dense_causal_sdpa, dense_heads_sdpa, sdpa_ctx
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 37, 16, dtype=torch.float64, generator=g)
    k = torch.randn(1, 2, 37, 16, dtype=torch.float64, generator=g)
    v = torch.randn(1, 2, 37, 16, dtype=torch.float64, generator=g)
    out = torch.full_like(q, 7.0)
    dense_heads_sdpa(q, k, v, out, torch.tensor([False, True, False, True]))
    ref = dense_causal_sdpa(q, k, v)
    torch.testing.assert_close(out[:, [1, 3]], ref[:, [1, 3]], rtol=1e-12, atol=1e-12)
    assert bool((out[:, [0, 2]] == 7.0).all())
    with sdpa_ctx("cpu", "flash"):   # CPU: no backend selection, just a no-op context
        pass


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tail", [1, 37, 150, 500])
def test_dense_tail_rows_attend_to_every_key(impl, tail):
    """``dense_tail``: the last rows equal exact causal attention (float64) over all their keys; every
    other row is exactly the sparse result on the index's kept keys (GQA folded, mixed patterns)."""
    B, Hq, Hkv, N, D = 2, 6, 2, 150, 16
    q, k, v = rand_qkv(B, Hq, Hkv, N, D, seed=tail, device=device_of(impl))
    pats = [HeadPattern("vertical_and_slash", 4, 8), HeadPattern("stream_llm", 4, 16),
            HeadPattern("block_sparse", 1), HeadPattern("dense"),
            HeadPattern("vertical_and_slash", 10, 20), HeadPattern("stream_llm", 0, 8)]
    out, idx = sparse_attention(q, k, v, pats, impl=impl, return_index=True, block_m=32, block_n=16,
                                dense_tail=tail)
    t = min(tail, N)
    sparse_ref = dense_causal_reference(q, k, v, mask=kept_mask(idx))
    dense_ref = dense_causal_reference(q, k, v)
    assert rel_err(out[:, :, N - t:], dense_ref[:, :, N - t:]) < TOL[impl]
    if t < N:
        assert rel_err(out[:, :, :N - t], sparse_ref[:, :, :N - t]) < TOL[impl]
        assert rel_err(sparse_ref[:, :, N - t:], dense_ref[:, :, N - t:]) > 1e-3, "the patterns must drop keys there"
