"""Medusa trees, KV compaction, greedy losslessness, typical mode, exactness of speculative sampling."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.decode import generate_plain
from accel.runtime.model import CompactLM
from accel.runtime.medusa import generate_medusa
from accel.runtime.verify import SpecState, accept_speculative as _accept_speculative, verify
from accel.runtime.tree import TreeBuffers, build_tree, default_tree

V = 97
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.3, tie_word_embeddings=True)
    return CompactLM.from_hf(LlamaForCausalLM(cfg).eval())


def random_heads(model, num_heads=3, seed=1):
    torch.manual_seed(seed)
    h = MedusaHeads(MedusaConfig(num_heads=num_heads, num_layers=1, hidden_size=64, vocab_size=V, projection="own"),
                    model.output.weight)
    for p in h.parameters():
        p.data.normal_(0, 0.3)
    return h.requires_grad_(False).eval()


class OracleHeads(nn.Module):
    """Knows the greedy continuation: finds the position by matching the hidden state against the
    reference run, then puts the true token k+2 places ahead at rank (t + k) % 3 of head k."""

    def __init__(self, model, prompt, continuation, num_heads=3):
        super().__init__()
        self.config = MedusaConfig(num_heads=num_heads, hidden_size=64, vocab_size=V)
        self.seq = torch.tensor(prompt + continuation)
        model.setup_cache(1, 512)
        with torch.no_grad():
            _, hid = model(self.seq[None], torch.arange(len(self.seq))[None])
        self.register_buffer("ref_hidden", hid[0])

    def forward(self, h):  # (1, 1, H) -> (K, 1, 1, V)
        t = int((self.ref_hidden - h[0, 0]).norm(dim=-1).argmin())
        K = self.config.num_heads
        out = torch.zeros(K, 1, 1, V)
        for k in range(K):
            base = torch.linspace(1, 0, V)  # some fixed ranking of the wrong tokens
            if t + k + 2 < len(self.seq):
                tok, rank = int(self.seq[t + k + 2]), (t + k) % 3
                order = [i for i in range(V) if i != tok]
                order.insert(rank, tok)
                base = torch.empty(V)
                base[torch.tensor(order)] = torch.linspace(1, 0, V)
            out[k, 0, 0] = base
        return out


def naive_tree(paths):
    nodes = [()] + sorted(paths, key=lambda p: (len(p), p))
    n = len(nodes)
    mask = [[nodes[i][: len(nodes[j])] == nodes[j] for j in range(n)] for i in range(n)]
    leaves = [p for p in nodes[1:] if not any(q[:-1] == p for q in nodes[1:])]
    return nodes, torch.tensor(mask), torch.tensor([len(p) for p in nodes]), leaves


def test_tree_buffers_match_naive_reference():
    tb = TreeBuffers(TREE, topk=3)
    nodes, mask, depth, leaves = naive_tree(TREE)
    assert torch.equal(tb.mask, mask) and torch.equal(tb.depth, depth)
    got_leaves = {tuple(nodes[i] for i, ok in zip(r.tolist(), v.tolist()) if ok)[-1]
                  for r, v in zip(tb.retrieve, tb.retrieve_valid)}
    assert got_leaves == set(leaves)
    for r, v in zip(tb.retrieve, tb.retrieve_valid):  # each row walks root -> leaf
        path = [nodes[i] for i, ok in zip(r.tolist(), v.tolist()) if ok]
        assert path == [path[-1][:d] for d in range(len(path))]
    root, topk = torch.tensor([5]), torch.arange(100, 109).view(3, 3)
    cand = tb.candidates(root, topk)
    for i, p in enumerate(nodes):
        assert int(cand[i]) == (5 if not p else 100 + 3 * (len(p) - 1) + p[-1])
    with pytest.raises(ValueError, match="prefix-closed"):
        TreeBuffers([(0, 1)])


def test_build_tree_is_greedy_optimal():
    acc = np.array([[0.6, 0.2, 0.1], [0.4, 0.2, 0.1], [0.3, 0.1, 0.05]])
    tree = build_tree(acc, num_nodes=8)
    value = lambda p: np.prod([acc[d, r] for d, r in enumerate(p)])
    allp = [p for d in (1, 2, 3) for p in itertools.product(range(3), repeat=d)]
    best = sorted(value(p) for p in allp)[-8:]
    assert sorted(value(p) for p in tree) == pytest.approx(best)
    assert all(p[:-1] in tree or len(p) == 1 for p in tree)
    t = default_tree(4)
    assert len(t) == 63 and max(len(p) for p in t) <= 4 and (0,) in t


def test_tree_forward_equals_full_forward(model):
    """Every tree node's logits == a plain forward of prefix + its path (mask + positions)."""
    tb = TreeBuffers(TREE, topk=3)
    prompt = torch.randint(0, V, (1, 7))
    model.setup_cache(1, 64)
    with torch.no_grad():
        model(prompt, torch.arange(7)[None])
        st = SpecState(tb, 16, 4, "cpu")
        st.reset(7)
        st.tree_tokens.copy_(torch.randint(0, V, (tb.num_nodes,)))
        logits, _ = verify(model, "sdpa", tb, st)
        nodes = [()] + tb.paths
        for i, p in enumerate(nodes):
            anc = [j for j in range(tb.num_nodes) if tb.mask[i, j]]
            seq = torch.cat([prompt[0], st.tree_tokens[anc]])
            ref, _ = model(seq[None], torch.arange(len(seq))[None])  # overwrites the cache: fine, rebuilt below
            assert torch.allclose(logits[i], ref[0, -1], atol=1e-4), p
            model(prompt, torch.arange(7)[None])
            verify(model, "sdpa", tb, st)


def test_kv_compaction_matches_naive(model):
    model.setup_cache(1, 64)
    for k, v in model.cache_view(1):
        k.normal_(), v.normal_()
    before = [(k.clone(), v.clone()) for k, v in model.cache_view(1)]
    src, dst = torch.tensor([10, 13, 17, 10]), torch.tensor([10, 11, 12, 13])
    model.copy_kv(src, dst)
    for (k0, v0), (k, v) in zip(before, model.cache_view(1)):
        ek, ev = k0.clone(), v0.clone()
        for s, d in zip(src.tolist(), dst.tolist()):
            ek[0, :, d], ev[0, :, d] = k0[0, :, s], v0[0, :, s]
        assert torch.equal(k, ek) and torch.equal(v, ev)


@pytest.mark.parametrize("tree", [TREE, None])
def test_greedy_medusa_equals_plain_with_random_heads(model, tree):
    heads = random_heads(model)
    for prompt in ([1, 5, 7, 9, 11], [42, 3]):
        ref = generate_plain(model, [prompt], 50)[0].tokens
        res = generate_medusa(model, heads, prompt, 50, tree=tree)
        assert res.tokens == ref
        assert sum(res.accept_lengths) >= 50 and min(res.accept_lengths) == 1


def test_greedy_medusa_equals_plain_with_oracle_heads(model):
    prompt = [1, 5, 7, 9, 11]
    ref = generate_plain(model, [prompt], 60)[0].tokens
    heads = OracleHeads(model, prompt, ref + generate_plain(model, [prompt + ref], 8)[0].tokens)
    res = generate_medusa(model, heads, prompt, 60, tree=TREE)
    assert res.tokens == ref
    assert np.mean(res.accept_lengths) > 2.5  # ranks 0..2 of all three heads are in TREE's paths
    eos = ref[20]
    res = generate_medusa(model, heads, prompt, 60, tree=TREE, eos_ids=(eos,))
    assert res.tokens == ref[: ref.index(eos) + 1] and res.stopped_on_eos


def test_typical_and_speculative_run_and_are_seeded(model):
    heads = random_heads(model)
    for mode in ("typical", "speculative"):
        a = generate_medusa(model, heads, [1, 2, 3], 30, tree=TREE, temperature=0.7, seed=3, acceptance=mode)
        b = generate_medusa(model, heads, [1, 2, 3], 30, tree=TREE, temperature=0.7, seed=3, acceptance=mode)
        assert a.tokens == b.tokens and a.num_new == 30 and all(1 <= x <= 4 for x in a.accept_lengths)
    with pytest.raises(ValueError, match="acceptance"):
        generate_medusa(model, heads, [1], 4, acceptance="nope")
    with pytest.raises(ValueError, match="heads"):
        generate_medusa(model, heads, [1], 4, tree=[(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)])


def test_speculative_acceptance_preserves_distribution():
    """Exact check of the tree rejection sampler on a 5-token vocabulary with fixed node distributions."""
    Vs, n = 5, 6000
    tb = TreeBuffers([(0,), (1,), (2,), (0, 0), (0, 1), (1, 0)], topk=3)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(tb.num_nodes, Vs, generator=g) * 1.5
    probs = torch.softmax(logits, -1)
    tree_tokens = torch.tensor([0, 1, 2, 3, 2, 4, 0])  # root; heads' (distinct per node) drafts
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(1)
    first = np.zeros(Vs)
    second = {}
    for _ in range(n):
        best, a, nxt = _accept_speculative(tb, tree_tokens, logits, 1.0, 1.0, gen, rng)
        path = tb.retrieve[best][0, : int(a) + 1].tolist()
        toks = tree_tokens[path[1:]].tolist() + [int(nxt)]
        first[toks[0]] += 1
        if len(path) > 1:  # a draft was accepted: the token after it comes from that node's distribution
            second.setdefault(path[1], np.zeros(Vs))[toks[1]] += 1
    assert np.abs(first / n - probs[0].numpy()).max() < 0.025
    for node, counts in second.items():
        if counts.sum() > 800:
            assert np.abs(counts / counts.sum() - probs[node].numpy()).max() < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_medusa_equals_eager(model):
    m = model.to("cuda")  # last test of the module: the fixture may move
    m.max_batch = m.max_seq_len = 0  # forces setup_cache to re-allocate the cache on the GPU
    heads = random_heads(model).to("cuda")
    ref = generate_plain(m, [[1, 5, 7, 9, 11]], 40)[0].tokens
    for mode in ("greedy", "typical"):
        e = generate_medusa(m, heads, [1, 5, 7, 9, 11], 40, tree=TREE, compile="eager", acceptance=mode, temperature=0.7 * (mode != "greedy"))
        g = generate_medusa(m, heads, [1, 5, 7, 9, 11], 40, tree=TREE, compile="graph", acceptance=mode, temperature=0.7 * (mode != "greedy"))
        assert g.tokens == e.tokens and g.accept_lengths == e.accept_lengths
    for mode in ("graph",):
        assert generate_medusa(m, heads, [1, 5, 7, 9, 11], 40, tree=TREE, compile=mode).tokens == ref, mode
