"""bench/kernels.py pieces that run on the CPU: the padding-share denominator (FLOPs of exactly the
kept pairs) and the fair FlexAttention mask (mask_mod keeps exactly our keys; its block mask covers
every kept pair and marks full only tiles that are entirely kept)."""
import pytest
import torch

from accel.bench.kernels import flex_exact_mask, kept_key_flops, make_inputs
from accel.kernels import HeadPattern, build_index, kept_mask, kernel_cost

pytest.importorskip("torch.nn.attention.flex_attention")

CASES = [  # pattern, kind, block_m, block_n, flex tile
    (HeadPattern("vertical_and_slash", 24, 40), "relative", 64, 64, 128),
    (HeadPattern("vertical_and_slash", 30, 70), "relative", 32, 16, 64),
    (HeadPattern("stream_llm", 16, 64), "aligned", 64, 64, 128),
    (HeadPattern("block_sparse", 3), "aligned", 32, 16, 64),
]


def _index(pat, bm, bn, n=333, dense_head=False):
    q, k, _ = make_inputs(n, seed=3, v_cols=20, band=60, shape=(1, 4, 2, 32), device="cpu")
    pats = [pat] * 4
    if dense_head:
        pats[1] = HeadPattern("dense")
    return build_index(q, k, pats, bm, bn), n


@pytest.mark.parametrize("pat,kind,bm,bn,blk", CASES)
def test_flex_exact_mask_keeps_exactly_our_keys(pat, kind, bm, bn, blk):
    idx, n = _index(pat, bm, bn, dense_head=kind == "relative")
    _, mask_mod, partial, full = flex_exact_mask(idx, n, kind, blk)
    want = kept_mask(idx)                                                       # (B,H,N,N)
    qi = torch.arange(n)[:, None].expand(n, n)
    ki = torch.arange(n)[None, :].expand(n, n)
    for h in range(4):
        got = mask_mod(torch.tensor(0), torch.tensor(h), qi, ki)
        assert torch.equal(got, want[0, h]), h
    # block level: every kept pair lies in a partial or full tile; full tiles are entirely kept
    nq = -(-n // blk)
    pad = nq * blk - n
    w = torch.nn.functional.pad(want, (0, pad, 0, pad)).view(1, 4, nq, blk, nq, blk)
    anyk = w.any(5).any(3)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    c = torch.nn.functional.pad(causal, (0, pad, 0, pad)).view(nq, blk, nq, blk)
    allk = (w | ~torch.nn.functional.pad(torch.ones(n, n, dtype=torch.bool), (0, pad, 0, pad))
            .view(nq, blk, nq, blk)).all(5).all(3)
    assert bool((~anyk | partial | full).all())
    assert bool((~full | allk).all())
    assert not bool((partial & full).any())
    if kind == "relative":                 # the dense head has entirely kept tiles below the diagonal
        assert bool(full[0, 1].any()) and bool((full[0, 1] == (allk[0, 1] & c.any(3).any(1) &
                                                              ~torch.eye(nq, dtype=torch.bool))).all())


@pytest.mark.parametrize("pat,kind,bm,bn,blk", CASES)
def test_kept_key_flops_counts_kept_pairs(pat, kind, bm, bn, blk):
    idx, n = _index(pat, bm, bn, dense_head=True)
    assert kept_key_flops(idx, n, 32) == 4 * 32 * int(kept_mask(idx).sum())
    assert kernel_cost(idx, n, 32) >= kept_key_flops(idx, n, 32)   # padding share >= 1


def test_flex_on_exact_mask_computes_our_attention():
    """End to end: FlexAttention (eager math path on the CPU) with the exact mask == our kernel's
    reference output on the same index."""
    from torch.nn.attention.flex_attention import flex_attention

    from accel.kernels.reference import sparse_attention_reference

    q, k, v = make_inputs(200, seed=1, v_cols=16, band=40, shape=(1, 4, 2, 32), device="cpu")
    for pat, kind in ((HeadPattern("vertical_and_slash", 16, 40), "relative"), (HeadPattern("block_sparse", 2), "aligned")):
        idx = build_index(q, k, [pat] * 4, 64, 64)
        ours = sparse_attention_reference(q, k, v, idx)
        bmask, *_ = flex_exact_mask(idx, 200, kind, 128)
        fo = flex_attention(q, k, v, block_mask=bmask, enable_gqa=True)
        assert ((fo - ours).norm() / ours.norm()).item() < 1e-5, kind
