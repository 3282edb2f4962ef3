"""The search's retrieval term (issue 15): the question rows' far-key recall.

On the real Qwen2.5-Coder-0.5B, attention-mass recall picked A-shape for every head and lost every
needle (results/experiments/qwen-needle-diag-2k.json).  Here: a head whose last rows retrieve one far
key: A-shape keeps none of that far mass, dense all of it, vertical-slash (estimated from those rows)
nearly all; and the search with the retrieval term picks a pattern that keeps it."""
import torch

from accel.kernels import HeadPattern, build_index
from accel.search import SearchConfig
from accel.search.score import attention_probs, far_distance, far_recall_of_indexes
from accel.search.search import search_layer

N, D, NEEDLE = 1024, 16, 200


def _retrieval_head(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = 0.3 * torch.randn(1, 1, N, D, generator=g, dtype=torch.float64)
    k = 0.3 * torch.randn(1, 1, N, D, generator=g, dtype=torch.float64)
    k[0, 0, NEEDLE, 0] = 8.0           # one far key ...
    q[0, 0, N - 64:, 0] = 2.5          # ... that only the last 64 rows (the question) look at
    return q, k


def _index(q, k, p):
    return build_index(q, k, [HeadPattern(*p)], 64, 64, last_q=64)


def test_far_recall_sees_the_needle_mass_recall_does_not_need():
    q, k = _retrieval_head()
    rows = slice(N - 64, N)
    p = attention_probs(q, k, N - 64, N, D ** -0.5)[0, 0]                        # (64, N)
    assert 0.02 < float(p[:, NEEDLE].mean()) < 0.5  # a few percent: what retrieval heads put on a needle
    idx = [_index(q, k, ("stream_llm", 64, 256)), _index(q, k, ("vertical_and_slash", 64, 256)),
           _index(q, k, ("dense", 0, 0))]
    rec, share = far_recall_of_indexes(q, k, idx, rows)
    assert float(share[0]) > 0.02
    assert float(rec[0, 0]) < 0.1            # A-shape: only the block-rounded window's edge is far
    assert float(rec[1, 0]) > float(p[:, NEEDLE].mean()) / (float(share[0]) + 1e-9) * 0.9  # the needle column kept
    assert float(rec[2, 0]) == 1.0
    # reference: the kept far mass from an explicit mask for A-shape (sink 64 + window 256)
    rr = torch.arange(N - 64, N)[:, None]
    cc = torch.arange(N)[None]
    far = (cc >= 64) & (cc <= rr - far_distance(N))
    lo = (((rr // 64) * 64 - 256 + 1).clamp_min(0) // 64) * 64   # the window in whole key blocks
    keep = (cc < 64) | ((cc >= lo) & (cc <= rr))
    assert abs(float((p * (far & keep)).sum() / (p * far).sum()) - float(rec[0, 0])) < 1e-9


def test_search_with_retrieval_term_keeps_the_far_key():
    q, k = _retrieval_head()
    q, k = q.float(), k.float()
    pats, dens, _ = search_layer(q, k, SearchConfig(seq_len=N, budget=0.3, retrieval_weight=0.5))
    chosen = pats[0]
    idx = _index(q, k, (chosen.name, chosen.size_1, chosen.size_2))
    rec, share = far_recall_of_indexes(q, k, [idx], slice(N - 64, N))
    needle = float(attention_probs(q, k, N - 64, N, D ** -0.5)[0, 0, :, NEEDLE].mean())
    assert float(rec[0, 0]) > 0.9 * needle / float(share[0]), chosen   # at least the needle's share kept
    assert chosen.name != "stream_llm"


def test_retrieval_weight_is_checked():
    import pytest

    from accel.search import SearchError

    with pytest.raises(SearchError, match="retrieval-weight"):
        SearchConfig(seq_len=1024, retrieval_weight=1.5).check()
