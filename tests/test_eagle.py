"""EAGLE draft: config bounds, features, dynamic tree vs a naive reference, greedy losslessness, draft KV rollback."""
import numpy as np
import pytest
import torch

from accel.runtime.decode import generate_plain
from accel.runtime.drafters.dynamic_tree import grow_tree, num_candidates, select_tree
from accel.runtime.drafters.eagle import EagleConfig, EagleConfigError, EagleDraft, default_feature_layers
from accel.runtime.drafters.eagle_decode import _draft_catch_up, eagle_prefill, eagle_step, forward_features, generate_eagle
from accel.runtime.errors import AccelError
from accel.runtime.model import CompactLM

from .eagle_tiny import V, make_draft, tiny_hf

@pytest.fixture(scope="module")
def hf():
    return tiny_hf()


@pytest.fixture(scope="module")
def model(hf):
    return CompactLM.from_hf(hf)


# ----------------------------------------------------------------------------- config

def test_config_round_trip_and_bounds(model):
    c = EagleConfig.for_base(model)
    assert c.feature_layers == (2, 2, 1) and default_feature_layers(32) == (2, 16, 29) and default_feature_layers(2) == (1, 1, 1)
    assert EagleConfig.from_dict(c.to_dict()) == EagleConfig(**{**c.to_dict(), "aux_layers": (2, 2, 1)})
    bad = [({"hidden_size": 0}, "hidden_size"), ({"aux_layers": [0, 1, 4]}, "outside"),
           ({"aux_layers": [0, 1]}, "3 base layers"), ({"num_key_value_heads": 3}, "multiple"),
           ({"vocab_size": "97"}, "number"), ({"bogus": 1}, "unknown"), ({"head_dim": 15}, "even")]
    for change, needle in bad:
        with pytest.raises(EagleConfigError, match=needle):
            EagleConfig.from_dict({**c.to_dict(), **change})
    with pytest.raises(EagleConfigError, match="lacks"):
        EagleConfig.from_dict({"hidden_size": 64})
    assert issubclass(EagleConfigError, AccelError)
    with pytest.raises(EagleConfigError, match="another model"):
        EagleDraft(c, torch.zeros(5, 64), torch.zeros(5, 64))


def test_state_dict_is_eagle3_layout_and_shares_base(model):
    d = make_draft(model)
    keys = set(d.state_dict())
    assert "fc.weight" in keys and "midlayer.self_attn.q_proj.weight" in keys and "norm.weight" in keys
    assert not any("embed" in k or "lm_head" in k for k in keys)  # shared, not stored
    assert d.embed_weight.data_ptr() == model.tok_embeddings.data_ptr()
    assert d.lm_head_weight.data_ptr() == model.output.weight.data_ptr()
    assert d.midlayer.self_attn.q_proj.weight.shape == (64, 128)  # reads cat[emb, h]: 2H


# ----------------------------------------------------------------------------- features

def test_features_match_transformers_and_logits_are_the_models(model, hf):
    ids = torch.randint(0, V, (1, 80))  # > 64 tokens: the causal-prefill branch
    pos = torch.arange(80)[None]
    layers = (2, 2, 1)
    model.setup_cache(1, 128)
    with torch.no_grad():
        ref_logits, ref_hidden = model(ids, pos)
        logits, hidden, feats = forward_features(model, layers, ids, pos)
        hs = hf(ids, output_hidden_states=True).hidden_states
    assert torch.equal(logits, ref_logits) and torch.equal(hidden, ref_hidden)
    for j, i in enumerate(layers):
        assert torch.allclose(feats[..., j * 64:(j + 1) * 64], hs[i], atol=1e-4)
    with pytest.raises(ValueError, match="feature layers"):
        forward_features(model, (0, 4), ids, pos)


# ----------------------------------------------------------------------------- dynamic tree

def naive_tree(parents, depth):
    n = len(parents)
    anc = []
    for i in range(n):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = parents[j]
        anc.append(path[::-1])
    mask = torch.tensor([[j in anc[i] for j in range(n)] for i in range(n)])
    return anc, mask


@pytest.mark.parametrize("k,D,N", [(3, 4, 10), (4, 3, 60), (2, 5, 7), (5, 1, 3)])
def test_dynamic_tree_matches_naive_reference(k, D, N):
    g = torch.Generator().manual_seed(k * 100 + D * 10 + N)
    first = torch.log_softmax(torch.randn(V, generator=g) * 3, -1)
    calls = []

    def step(d, tokens, parent_rows):
        logp = torch.log_softmax(torch.randn(len(tokens), V, generator=g) * 3, -1)
        calls.append((d, tokens.clone(), parent_rows.clone(), logp))
        return logp

    t = grow_tree(torch.tensor(5), first, step, k, D, N)
    assert len(calls) == D - 1 and all(c[1].shape == (k,) for c in calls)
    n = t.num_nodes
    assert n == min(N, num_candidates(k, D) - 1) + 1
    parents = t.parents.tolist()
    assert parents[0] == -1 and all(0 <= parents[i] < i for i in range(1, n))  # parents first, prefix-closed
    anc, mask = naive_tree(parents, t.depth)
    assert torch.equal(t.mask, mask)
    for i in range(n):
        assert int(t.depth[i]) == len(anc[i]) - 1
        assert t.ancestors[i, : len(anc[i])].tolist() == anc[i] and bool(t.retrieve_valid[i, len(anc[i]) - 1])
        assert not t.retrieve_valid[i, len(anc[i]):].any()
    assert t.tokens[0] == 5 and t.depth[0] == 0 and torch.equal(t.retrieve, t.ancestors)
    # naive EAGLE-2 in plain Python: candidates as (score, token path); frontier = best k per depth
    cands = [(float(first[tok]), (tok,)) for tok in first.topk(k).indices.tolist()]
    frontier = cands
    for d, toks, rows, logp in calls:
        assert [f[1][-1] for f in frontier] == toks.tolist()
        new = [(s + float(logp[r, c]), path + (c,)) for r, (s, path) in enumerate(frontier)
               for c in logp[r].topk(k).indices.tolist()]
        cands += new
        frontier = sorted(new, key=lambda x: -x[0])[:k]
    best = sorted(cands, key=lambda x: -x[0])[: n - 1]
    paths = {tuple(t.tokens[anc[i][1:]].tolist()) for i in range(1, n)}
    assert paths == {p for _, p in best}
    for i in range(1, n):  # each node's score = the naive score of its token path
        path = tuple(t.tokens[anc[i][1:]].tolist())
        assert abs(float(t.scores[i]) - dict((p, s) for s, p in cands)[path]) < 1e-5


def test_select_tree_keeps_best_and_breaks_ties_towards_parents():
    # root, two depth-1, four depth-2 candidates; a child tying its parent must not be kept without it
    toks = torch.arange(7)
    scores = torch.tensor([0.0, -1.0, -2.0, -1.0, -5.0, -2.0, -2.0])
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 2])
    depth = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    t = select_tree(toks, scores, parents, depth, 3)
    assert t.cand_index.tolist() == [0, 1, 2, 3]  # -1, -1(child of 1), -2 (the depth-1 wins the tie)
    t = select_tree(toks, scores, parents, depth, 2)
    assert t.cand_index.tolist() == [0, 1, 3] and t.parents.tolist() == [-1, 0, 1]


# ----------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("k,D,N", [(4, 4, 24), (2, 3, 5), (8, 5, 48)])
def test_greedy_eagle_equals_plain_with_random_draft(model, k, D, N):
    d = make_draft(model)
    for prompt in ([1, 5, 7, 9, 11], [42, 3], list(range(3, 70))):
        ref = generate_plain(model, [prompt], 40)[0].tokens
        res = generate_eagle(model, d, prompt, 40, top_k=k, depth=D, num_nodes=N)
        assert res.tokens == ref
        assert sum(res.accept_lengths) >= 40 and min(res.accept_lengths) >= 1


class WrongDraft(EagleDraft):
    """Puts all its mass on tokens the reference never emits: every proposal is wrong."""
    banned: list[int] = []

    def logits(self, h_out):
        out = torch.full(h_out.shape[:-1] + (V,), -1e9, dtype=h_out.dtype)
        out[..., self.banned] = torch.linspace(1, 0, len(self.banned))
        return out


class OracleDraft(EagleDraft):
    """Knows the greedy continuation: the query at position p predicts token p+2."""
    seq: list[int] = []

    def forward(self, hidden, token_ids, positions, cache, write_slots, mask):
        logits, h = super().forward(hidden, token_ids, positions, cache, write_slots, mask)
        p = positions + 2
        tgt = torch.tensor(self.seq + [0] * 200)[p.clamp(max=len(self.seq) + 199)]
        return torch.nn.functional.one_hot(tgt, V).float() * 10, h


def test_wrong_and_oracle_drafts_still_give_plain_tokens(model):
    prompt = [1, 5, 7, 9, 11]
    ref = generate_plain(model, [prompt], 60)[0].tokens
    wrong = make_draft(model, cls=WrongDraft)
    wrong.banned = [t for t in range(V) if t not in ref][:8]
    res = generate_eagle(model, wrong, prompt, 60, top_k=4, depth=3, num_nodes=12)
    assert res.tokens == ref and set(res.accept_lengths) == {1}
    oracle = make_draft(model, cls=OracleDraft)
    oracle.seq = prompt + ref + generate_plain(model, [prompt + ref], 8)[0].tokens
    res = generate_eagle(model, oracle, prompt, 60, top_k=3, depth=5, num_nodes=16)
    assert res.tokens == ref
    assert np.mean(res.accept_lengths) > 4  # depth 5 + the root: up to 6 per step
    eos = ref[20]
    res = generate_eagle(model, oracle, prompt, 60, top_k=3, depth=5, num_nodes=16, eos_ids=(eos,))
    assert res.tokens == ref[: ref.index(eos) + 1] and res.stopped_on_eos


def test_draft_cache_rolls_back_to_the_accepted_path(model):
    """After several steps (tree slots written and discarded), the draft's state equals a fresh draft
    prefill over the committed sequence: its KV holds exactly the accepted path."""
    d = make_draft(model)
    prompt = [1, 5, 7, 9, 11]
    with torch.no_grad():
        model.setup_cache(1, 256)
        cache = d.new_cache(1, 256)
        root, logp, h = eagle_prefill(model, d, prompt, cache)
        seq = list(prompt)
        for _ in range(4):
            emitted, root, logp, h = eagle_step(model, d, cache, len(seq), root, logp, h, 4, 3, 10)
            seq += emitted.tolist()
        fresh = d.new_cache(1, 256)
        root2, logp2, h2 = eagle_prefill(model, d, seq, fresh)
    assert int(root2) == int(root) and cache.length == fresh.length == len(seq)
    assert torch.allclose(logp, logp2, atol=1e-4) and torch.allclose(h, h2, atol=1e-4)
    n = len(seq)
    assert torch.allclose(cache.k[:, :, :n], fresh.k[:, :, :n], atol=1e-4)


@pytest.mark.model
def test_greedy_eagle_equals_plain_on_smollm2(smollm2):
    m = CompactLM.from_hf(smollm2.model)
    d = EagleDraft(EagleConfig.for_base(m), m.tok_embeddings, m.output.weight).init_weights(0, 0.02).eval()
    prompt = smollm2.tokenizer.encode("The capital of France is")
    ref = generate_plain(m, [prompt], 16)[0].tokens
    res = generate_eagle(m, d, prompt, 16, top_k=4, depth=4, num_nodes=16)
    assert res.tokens == ref


def test_speculative_acceptance_on_a_dynamic_tree_preserves_distribution():
    """Exact check of the dynamic tree's rejection sampler with fixed node distributions (5-token vocab)."""
    from accel.runtime.drafters.eagle_decode import accept_speculative
    Vs, n = 5, 6000
    g = torch.Generator().manual_seed(0)
    # root; three depth-1 drafts; two children of node 1, one of node 2, one grandchild: parents first
    toks = torch.tensor([0, 1, 2, 3, 2, 4, 0, 1])
    parents = torch.tensor([-1, 0, 0, 0, 1, 1, 2, 4])
    depth = torch.tensor([0, 1, 1, 1, 2, 2, 2, 3])
    tree = select_tree(toks, -depth.double() - torch.arange(8) * 1e-3, parents, depth, 7)
    assert tree.parents.tolist() == parents.tolist()
    logits = torch.randn(8, Vs, generator=g) * 1.5
    probs = torch.softmax(logits, -1)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(1)
    first, second = np.zeros(Vs), {}
    for _ in range(n):
        path, nxt = accept_speculative(tree, logits, 1.0, 1.0, gen, rng)
        path = path.tolist()
        out = tree.tokens[path[1:]].tolist() + [int(nxt)]
        first[out[0]] += 1
        if len(path) > 1:  # a draft was accepted: the token after it comes from that node's distribution
            second.setdefault(path[1], np.zeros(Vs))[out[1]] += 1
    assert np.abs(first / n - probs[0].numpy()).max() < 0.025
    checked = 0
    for node, counts in second.items():
        if counts.sum() > 800:
            assert np.abs(counts / counts.sum() - probs[node].numpy()).max() < 0.05
            checked += 1
    assert checked >= 1


def test_sampling_runs_is_seeded_and_greedy_at_zero_temperature(model):
    d = make_draft(model)
    prompt = [1, 5, 7, 9, 11]
    a = generate_eagle(model, d, prompt, 30, top_k=4, depth=3, num_nodes=12, temperature=0.8, top_p=0.9, seed=3)
    b = generate_eagle(model, d, prompt, 30, top_k=4, depth=3, num_nodes=12, temperature=0.8, top_p=0.9, seed=3)
    assert a.tokens == b.tokens and len(a.tokens) == 30
    ref = generate_plain(model, [prompt], 30)[0].tokens
    assert generate_eagle(model, d, prompt, 30, top_k=4, depth=3, num_nodes=12, temperature=0.0).tokens == ref
    with pytest.raises(ValueError, match="top_p"):
        generate_eagle(model, d, prompt, 5, temperature=1.0, top_p=0.0)
