"""Per-request overhead of speculative decoding (issue 14): what a request paid outside its decode
that plain decoding does not, now paid once per model / tree, with the tokens unchanged."""

import collections

import pytest
import torch

from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.decode import generate_plain
from accel.runtime.drafters import MedusaDrafter
from accel.runtime.engine import Engine, Sampling
from accel.runtime.medusa import generate_medusa
from accel.runtime.model import CompactLM
from accel.runtime.tree import TreeBuffers
from .conftest import make_tiny_llama

V = 97
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


def _model():   # the shared tiny Llama (tests/conftest.py), larger init so drafts are sometimes right
    return CompactLM.from_hf(make_tiny_llama(V, initializer_range=0.3, max_position_embeddings=1024))


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


# ----------------------------------------------------------------------------- work per request, by phase

def _eagle_engine(m, k=3, depth=3, nodes=8):
    from accel.runtime.drafters import EagleDrafter

    from .eagle_tiny import make_draft
    return Engine(m, EagleDrafter(make_draft(m), top_k=k, depth=depth, num_nodes=nodes), mode=False)


def _prompt(n, salt=3):
    return [(7 * i + salt) % V for i in range(n)]


def _phase_counts(eng, prompt, n_new):
    from accel.bench.request_phases import PhaseOps, profile_request

    ops = PhaseOps()
    with torch.no_grad():
        res = profile_request(eng, prompt, Sampling(max_new_tokens=n_new), ops=ops)
    total = {f: sum(c.get(f, 0) for ph, c in ops.counts.items() if ph not in ("decode", "prefill"))
             for f in ("ops", "allocs", "syncs", "host_tensors", "replays", "captures")}
    return res, ops, total


def test_second_eagle_request_dispatches_bounded_work_outside_decode():
    """Issue 14: an EAGLE request cost ~50-61 ms outside its decode steps on the H200 against plain's
    ~14-19 ms (its prefill). What a second request dispatched outside the base prefill (the phases
    setup, get_step, reset, draft_prefill, first_tree, teardown), counted the way they run on CUDA (a
    captured step = one replay), before -> now, for a 100-token prompt after a shorter warm-up:
    - captures 1 -> 0: the loop state was sized for the request that captured, so a request asking
      more new tokens than the warm-up captured the whole step again (~0.1-0.2 s for EAGLE on the H200);
    - aten ops 87 -> 14 (allocations 59 -> 1): the draft prefill ran eagerly over the whole prompt
      (~45 launches with prompt-length shapes, logits for every position), the state was rebuilt, six
      buffers were zeroed;
    - host syncs 4 -> 1 (the prefill timing's): a sync after a capture lookup that captured nothing,
      a read of the step counter, a second read-back of every generated token at the end.
    Tokens are plain greedy's."""
    from accel.runtime.decode import generate_plain

    m = _model()
    m.setup_cache(1, 320)  # one cache for the prompt file (as the engine and the benches size it)
    eng = _eagle_engine(m)
    eng.generate([_prompt(20, 5)], Sampling(max_new_tokens=8))  # the warm-up: captures, asks fewer tokens
    p = _prompt(100)
    res, ops, total = _phase_counts(eng, p, 24)
    assert res.tokens == generate_plain(_model(), [p], 24)[0].tokens
    assert total["captures"] == 0, dict(ops.counts)
    assert total["ops"] <= 16, dict(ops.counts)
    assert total["allocs"] <= 2, dict(ops.counts)
    assert total["syncs"] <= 1, dict(ops.counts)
    assert total["replays"] == 3  # two prompt chunks of 64, the first tree
    # a plain request's work outside its decode is its prefill (+ 2 copies into the step's inputs):
    # EAGLE's own work on top of it is the draft prefill and first tree, a few launches
    plain = Engine(m, None, mode=False)
    plain.generate([_prompt(20, 5)], Sampling(max_new_tokens=8))
    _, _, ptotal = _phase_counts(plain, p, 24)
    assert total["ops"] - ptotal["ops"] <= 14


def test_eagle_draft_prefill_shapes_do_not_depend_on_the_prompt_length(monkeypatch):
    """The draft's pass over the prompt used to run eagerly at the prompt's length: every request
    brought new shapes (a new plan per shape where a backend plans them: cuDNN attention, the SDPA
    default on Hopper) and its launch count grew with nothing. Now it is fixed-size chunks of a step
    captured once: inside the captured steps (draft prefill chunks, first tree) a 40- and a 150-token
    prompt run the same ops on the same shapes, only more chunks; outside them the request only copies
    its features and tokens into the chunk step's inputs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from accel.runtime import phases
    from accel.runtime.drafters.eagle_drafter import PROMPT_CHUNK
    from accel.runtime.steps import StepGraph

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.phase, self.inside, self.seen, self.outside = None, 0, collections.Counter(), set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.phase in ("draft_prefill", "first_tree"):
                if self.inside:
                    self.seen[(func._schema.name, tuple(tuple(a.shape) for a in args
                                                        if isinstance(a, torch.Tensor)))] += 1
                else:
                    self.outside.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    m = _model()
    m.setup_cache(1, 320)
    eng = _eagle_engine(m)
    eng.generate([_prompt(20, 5)], Sampling(max_new_tokens=8))
    call = StepGraph.__call__
    got = []
    for n in (40, 150):
        rec = Shapes()

        def replay(self_):
            rec.inside += 1
            try:
                return call(self_)
            finally:
                rec.inside -= 1
        monkeypatch.setattr(StepGraph, "__call__", replay)
        with torch.no_grad(), phases.hooked(lambda name: setattr(rec, "phase", name)), rec:
            eng.generate([_prompt(n)], Sampling(max_new_tokens=8))
        got.append(rec)
    a, b = got
    assert set(a.seen) == set(b.seen) and any("scaled_dot_product" in s[0] for s in a.seen)
    views = {"aten::transpose", "aten::slice", "aten::view", "aten::select", "aten::alias", "aten::lift_fresh"}
    assert a.outside - views == b.outside - views <= {"aten::copy_", "aten::cat", "aten::fill_", "aten::_to_copy"}, \
        (a.outside, b.outside)
    # each chunk runs the same ops: the counts differ by whole chunks (3 more for 150 tokens than for 40)
    chunks = -(-150 // PROMPT_CHUNK) - -(-40 // PROMPT_CHUNK)
    assert all((b.seen[s] - a.seen[s]) % chunks == 0 for s in a.seen)
    assert any(b.seen[s] > a.seen[s] for s in a.seen if "scaled_dot_product" in s[0])


def test_second_medusa_request_asking_more_tokens_reuses_the_capture():
    """The same state sizing for Medusa: a short warm-up request no longer makes the next, longer one
    capture the step again; outside its prefill a request dispatches its first tree (the heads, eager)
    and a few launches."""
    m = _model()
    m.setup_cache(1, 320)
    heads = _heads(m)
    eng = Engine(m, MedusaDrafter(heads, TREE), mode=False)
    eng.generate([_prompt(20, 5)], Sampling(max_new_tokens=6))
    res, ops, total = _phase_counts(eng, _prompt(60), 30)
    assert res.tokens == generate_plain(_model(), [_prompt(60)], 30)[0].tokens
    assert total["captures"] == 0 and total["syncs"] <= 1, dict(ops.counts)
    assert total["ops"] <= 30, dict(ops.counts)


def test_eagle_chunk_step_survives_its_capture_warm_ups():
    """On CUDA a captured step first runs twice on a side stream with whatever its inputs hold: the
    draft-prefill chunk then has no prompt tokens left (its counter at or below 0) and must still index
    inside its chunk (a device-side assert otherwise), writing only slots the cache has room for."""
    m = _model()
    m.setup_cache(1, 320)
    eng = _eagle_engine(m)
    eng.generate([_prompt(20, 5)], Sampling(max_new_tokens=8))
    dr = eng.drafter
    dr.reset()
    dr._chunk_in[2].zero_()
    with torch.no_grad():
        for _ in range(3):  # the left counter goes 0, -64, -128
            dr._chunk.fn()
    assert int(dr.length) == 3 and int(dr._chunk_in[2]) == -3 * 64
    p = _prompt(100)
    assert eng.generate([p], Sampling(max_new_tokens=12))[0].tokens == generate_plain(_model(), [p], 12)[0].tokens
