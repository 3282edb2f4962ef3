"""Per-request overhead of speculative decoding (issue 14): what a request paid outside its decode
that plain decoding does not, now paid once per model / tree, with the tokens unchanged."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.decode import generate_plain
from accel.runtime.drafters import MedusaDrafter
from accel.runtime.engine import Engine, Sampling
from accel.runtime.medusa import generate_medusa
from accel.runtime.model import CompactLM
from accel.runtime.tree import TreeBuffers

V = 97
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.3,
                      tie_word_embeddings=True)
    return CompactLM.from_hf(LlamaForCausalLM(cfg).eval())


@pytest.fixture(scope="module")
def model():
    return _model()


def _heads(model, scale=0.3):
    torch.manual_seed(1)
    h = MedusaHeads(MedusaConfig(num_heads=3, num_layers=1, hidden_size=64, vocab_size=V, projection="own"),
                    model.output.weight)
    for p in h.parameters():
        p.data.normal_(0, scale)
    return h.requires_grad_(False).eval()


def test_tree_buffers_are_built_once_per_tree_and_device(model):
    """generate_medusa builds a drafter per call; its tree buffers (Python loops + one copy per
    tensor) are now shared, so the drafter and the captured step are the same across calls."""
    heads = _heads(model)
    a, b = MedusaDrafter(heads, TREE), MedusaDrafter(heads, list(reversed(TREE)))
    assert a.tree is b.tree and a.cache_key() == b.cache_key()
    assert MedusaDrafter(heads, TREE[:3]).tree is not a.tree
    fresh = TreeBuffers(TREE)
    for name in ("tree_indices", "mask", "depth", "retrieve", "retrieve_valid", "node_path", "children", "ancestors"):
        assert torch.equal(getattr(fresh, name), getattr(a.tree, name)), name
    for i in range(40):  # bounded: old trees are dropped, the most recent kept
        TreeBuffers.shared([(0,), (i,)])
    assert TreeBuffers.shared([(0,), (39,)]) is TreeBuffers.shared([(39,), (0,)])


def test_one_cache_for_the_whole_prompt_file_and_no_recapture():
    """A longer prompt later in the file used to re-allocate the KV cache mid-file, dropping the
    captured step; the engine now sizes the cache once for the file, and the output is unchanged."""
    m = _model()
    heads = _heads(m)
    prompts = [[1, 5, 7], [i % V for i in range(3, 90)], [i * 7 % V for i in range(5, 200)]]  # growing lengths
    s = Sampling(max_new_tokens=12)
    want = [generate_plain(_model(), [p], 12)[0].tokens for p in prompts]
    eng = Engine(m, MedusaDrafter(heads, TREE))
    seen = []

    def on_result(row, r):
        seen.append((m.kv.data_ptr(), [id(v) for v in m.step_graphs.values()]))

    got = eng.generate(prompts, s, on_result=on_result)
    assert [r.tokens for r in got] == want
    assert len({p for p, _ in seen}) == 1  # never re-allocated
    assert all(ids == seen[0][1] and len(ids) == 1 for _, ids in seen)  # the same captured step throughout


@pytest.mark.parametrize("n", [1, 2, 5, 13, 30])
def test_no_steps_run_past_max_new_tokens(model, n):
    """Read-backs come sooner near the end, so no verify step runs after the last needed one (there
    were up to check_every - 1 of them), and the tokens equal plain greedy's."""
    heads = _heads(model, scale=0.0)  # zero heads: proposals of a fixed shape, mostly rejected
    p = [1, 5, 7, 9, 11]
    want = generate_plain(model, [p], n)[0].tokens
    r = generate_medusa(model, heads, p, n, tree=TREE)
    assert r.tokens == want
    [cap] = [v for k, v in model.step_graphs.items() if k[0][0] == "spec" and v.drafter.heads is heads]
    steps_run = int(cap.state.step)
    assert steps_run == len(r.accept_lengths), (steps_run, r.accept_lengths)
    assert sum(r.accept_lengths) >= n > sum(r.accept_lengths[:-1])
