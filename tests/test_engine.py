"""The engine redesign: one prefill decision, one attention-metadata object, the stepping engine,
per-prompt sparse prefill in a batch, the drafter protocol (hooks, a new tree every step, a captured
step reused across requests), pack format 2 and the removed decode modes."""
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from accel.cli import app
from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.attention_meta import AttentionMeta
from accel.runtime.decode import generate_plain
from accel.runtime.drafters import MedusaDrafter
from accel.runtime.engine import Engine, Sampling
from accel.runtime.errors import PackError
from accel.runtime.medusa import generate_medusa
from accel.runtime.model import CompactLM
from accel.runtime.pack import FORMAT_VERSION, Pack, load_pack, save_pack
from accel.kernels.patterns import predicted_work
from accel.runtime.prefill import DEFAULT_SPARSE_MIN_LEN, DENSE, PrefillPlan, plan_prefill, sparse_threshold
from accel.runtime.tree import TreeBuffers

V = 97
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
PROMPTS = [[1, 5, 7, 9, 11], [3, 4], [8, 6, 8, 6, 8, 6, 8, 2, 40]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
                      tie_word_embeddings=True)
    return CompactLM.from_hf(LlamaForCausalLM(cfg).eval())


def _heads(model, seed=1):
    torch.manual_seed(seed)
    h = MedusaHeads(MedusaConfig(num_heads=3, num_layers=1, hidden_size=64, vocab_size=V, projection="own"),
                    model.output.weight)
    for p in h.parameters():
        p.data.normal_(0, 0.3)
    return h.requires_grad_(False).eval()


# -- prefill decision -----------------------------------------------------------------------------
def test_plan_prefill_is_the_one_decision():
    cheap, heavy = ["stream_llm", 64, 64, 0.0], ["dense", 0, 0, 0.0]
    layers = [[cheap, cheap], [heavy, cheap], [heavy, heavy]]  # predicted work ~0.1, ~0.55, 1.0 at 4096
    pack = SimpleNamespace(has_patterns=True, patterns=layers, patterns_info={},
                           layer_patterns=lambda i: layers[i])
    assert sparse_threshold(pack, "cpu") is None  # CPU: off unless asked for
    assert sparse_threshold(pack, "cuda") == DEFAULT_SPARSE_MIN_LEN
    pack.patterns_info = {"sparse_min_len": 9000}  # measured for this model: wins on CUDA
    assert sparse_threshold(pack, "cuda") == 9000
    assert sparse_threshold(pack, "cuda", override=100) == 100
    assert plan_prefill(pack, 99, "cpu", override=100) is DENSE
    plan = plan_prefill(pack, 4096, "cpu", override=100)
    # layers predicted to keep > DEFAULT_DENSE_ABOVE of the dense work are planned dense (None) up
    # front, so nothing reads the built index back (no host sync per layer while the prompt runs)
    assert plan.sparse and plan.patterns == [layers[0], layers[1], None] and plan.dense_above is None
    assert plan.work_share(4096, 64) > predicted_work([layers[0]], 4096)
    pack.layer_patterns = lambda i: [heavy, heavy]  # nothing left sparse: the plain dense plan
    assert plan_prefill(pack, 4096, "cpu", override=100) is DENSE
    assert plan_prefill(pack, 100, "cpu", override=100, dense=True) is DENSE
    assert plan_prefill(None, 10 ** 6, "cuda") is DENSE


def test_attention_meta_masks_equal_the_layouts():
    S = 32
    slots = torch.arange(S)
    pos = torch.tensor([[5], [9]])
    m = AttentionMeta.causal(pos).dense_mask(S)[:, 0]  # decode: slots 0..pos
    assert torch.equal(m, (slots[None, None] <= pos[..., None]))
    tb = TreeBuffers(TREE, topk=3)
    prefix = torch.tensor([7])
    m = AttentionMeta.tree(prefix, tb.depth, tb.ancestors).dense_mask(S)[0, 0]  # (N+1, S)
    n = tb.num_nodes
    want = torch.zeros(n, S, dtype=torch.bool)
    want[:, :7] = True
    want[:, 7:7 + n] = tb.mask  # ancestors and itself
    assert torch.equal(m, want)


# -- engine -----------------------------------------------------------------------------------------
def test_engine_streams_chunks_that_make_the_results(model):
    engine = Engine(model)
    chunks = list(engine.stream(PROMPTS, Sampling(20), check_every=3))
    results = generate_plain(model, PROMPTS, 20)
    for row, r in enumerate(results):
        mine = [c for c in chunks if c.row == row]
        assert sum((c.tokens for c in mine), []) == r.tokens
        assert [c.done for c in mine][-1] and not any(c.done for c in mine[:-1])
    seen = []
    Engine(model, MedusaDrafter(_heads(model), TREE)).generate(PROMPTS, Sampling(12),
                                                              on_result=lambda row, r: seen.append(row))
    assert seen == [0, 1, 2]


def test_every_prompt_of_a_batch_gets_its_own_sparse_prefill(model, monkeypatch):
    import accel.kernels as kernels

    calls = []

    def fake(q, k, v, patterns, **kw):
        calls.append(q.shape[2])
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    monkeypatch.setattr(kernels, "sparse_attention", fake, raising=False)
    prompts = [list(range(1, 41)), list(range(2, 72)), [5, 6, 7]]
    pats = [["layer0"], ["layer1"]]
    plans = [PrefillPlan(pats), PrefillPlan(pats), DENSE]
    got = generate_plain(model, prompts, 10, plans=plans)
    assert calls == [40, 40, 70, 70]  # both long prompts, each at its own length, every layer; not the short one
    assert [r.tokens for r in got] == [r.tokens for r in generate_plain(model, prompts, 10)]  # fake == dense
    singles = [generate_plain(model, [p], 10)[0].tokens for p in prompts]
    assert [r.tokens for r in got] == singles


# -- drafters ---------------------------------------------------------------------------------------
class AlternatingDrafter(MedusaDrafter):
    """Medusa heads, but a different tree every step (and a record of the protocol's calls)."""

    fixed_tree = False

    def __init__(self, heads):
        super().__init__(heads, TREE)
        self.trees = [self.tree, TreeBuffers([(0,), (0, 0), (1,)])]
        self.calls = {"reset": 0, "begin": 0, "propose": 0, "accept": 0}

    def bounds(self):
        return max(t.num_heads for t in self.trees), max(t.num_nodes for t in self.trees)

    def reset(self):
        self.calls["reset"] += 1

    def begin(self, feats):
        self.calls["begin"] += 1
        assert feats.dim() == 3  # (F, L, H)

    def accept(self, feats, nodes, n):
        self.calls["accept"] += 1
        assert feats.dim() == 3 and nodes.dim() == 1 and int(n) >= 0  # (F, N+1, H), path node ids

    def propose(self, root, feats):
        self.calls["propose"] += 1
        self.tree = self.trees[self.calls["propose"] % 2]
        return super().propose(root, feats)


def test_a_new_tree_every_step_and_the_hooks_are_called(model):
    d = AlternatingDrafter(_heads(model))
    for prompt in ([1, 5, 7, 9, 11], [42, 3]):
        ref = generate_plain(model, [prompt], 30)[0].tokens
        [r] = Engine(model, d).generate([prompt], Sampling(30))
        assert r.tokens == ref
    c = d.calls
    assert c["reset"] == 2 and c["begin"] == 2 and c["accept"] >= 10 and c["propose"] == c["accept"] + 2


def test_captured_step_is_reused_across_requests(model):
    heads = _heads(model)
    generate_medusa(model, heads, [1, 2, 3], 8, tree=TREE)
    cached = {k: v for k, v in model.step_graphs.items() if k[0][0] == "spec"}
    assert len(cached) == 1
    a = generate_medusa(model, heads, [4, 5, 6, 7], 8, tree=TREE)  # a new request, a new MedusaDrafter object
    after = {k: v for k, v in model.step_graphs.items() if k[0][0] == "spec"}
    assert after.keys() == cached.keys() and all(after[k] is cached[k] for k in cached)
    assert a.tokens == generate_plain(model, [[4, 5, 6, 7]], 8)[0].tokens  # the state was reset in place


def test_removed_decode_modes_name_the_replacement(model):
    for bad in ("inductor", "compile"):
        with pytest.raises(ValueError, match="use 'exact'"):
            generate_plain(model, PROMPTS, 4, compile=bad)


# -- pack format 2 ----------------------------------------------------------------------------------
def test_pack_v2_round_trip_and_v1_still_read(tmp_path):
    from pathlib import Path

    v1 = load_pack(Path(__file__).parent / "fixtures" / "v1_tiny_pack.safetensors")
    assert v1.format_version == "1" and v1.drafter_kind == "medusa" and v1.has_drafter and v1.patterns
    path = save_pack(v1, tmp_path / "v2.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["accel.format_version"] == FORMAT_VERSION == "2"
    assert meta["accel.drafter.kind"] == "medusa" and "accel.medusa" not in meta
    v2 = load_pack(path)
    assert v2.format_version == "2" and v2.drafter == v1.drafter and v2.patterns == v1.patterns
    assert set(v2.tensors) == set(v1.tensors) and all(torch.equal(v2.tensors[k], v1.tensors[k]) for k in v1.tensors)
    assert "blocks.0.layers.0.weight" in v2.tensors  # vLLM's Medusa names


def test_shipped_default_pack_reads_as_v1():
    from accel.runtime.generate import default_pack_path

    p = load_pack(default_pack_path())
    assert p.drafter_kind == "medusa" and p.drafter["num_heads"] == 4 and len(p.drafter["tree"]) == 63


@pytest.mark.parametrize("bad,needle", [({"num_heads": 10 ** 9}, "num_heads"), ({"hidden_size": -1}, "hidden_size"),
                                        ({"tree": [[0, 0, 0, 0, 0]]}, "tree")])
def test_drafter_config_bounds_checked_before_sizing(tmp_path, bad, needle):
    cfg = {"num_heads": 3, "num_layers": 1, "hidden_size": 8, "vocab_size": 16, "projection": "shared", **bad}
    with pytest.raises(PackError, match=needle):
        save_pack(Pack("m", "fp", drafter=cfg, tensors={"x": torch.zeros(1)}, drafter_kind="medusa"),
                  tmp_path / "p.safetensors")
    with pytest.raises(PackError, match="unknown drafter kind"):
        save_pack(Pack("m", "fp", drafter=cfg, tensors={"x": torch.zeros(1)}, drafter_kind="eagle9"),
                  tmp_path / "p.safetensors")


# -- CLI --------------------------------------------------------------------------------------------
def test_cli_stream_and_inspect_and_removed_compile(tiny_model_dir, tmp_path):
    runner = CliRunner()
    f = tmp_path / "one.txt"
    f.write_text("hello there")
    common = ["generate", "--prompt-file", str(f), "--model", str(tiny_model_dir), "-n", "12", "--no-chat"]
    streamed = runner.invoke(app, common + ["--stream"])
    plain = runner.invoke(app, common)
    assert streamed.exit_code == 0 and plain.exit_code == 0, streamed.output + plain.output
    assert streamed.output.strip() == plain.output.strip()
    r = runner.invoke(app, common + ["--compile", "inductor"])
    assert r.exit_code != 0 and "use --compile exact" in r.output and "Traceback" not in r.output
    v1 = str(__import__("pathlib").Path(__file__).parent / "fixtures" / "v1_tiny_pack.safetensors")
    r = runner.invoke(app, ["pack", "inspect", v1])
    assert r.exit_code == 0 and "medusa" in r.output and "format version" in r.output


def test_generator_on_completion_is_called_per_prompt(tiny_model_dir):
    from accel.runtime.generate import GenerationConfig, Generator
    from accel.runtime.prompts import Prompt

    gen = Generator.load(str(tiny_model_dir), device="cpu", config=GenerationConfig(max_new_tokens=6, chat=False))
    got = []
    comps = gen.run([Prompt("a", prompt="abc"), Prompt("b", prompt="a longer one")], on_completion=got.append)
    assert [c.id for c in got] == ["a", "b"] and [c.tokens for c in got] == [c.tokens for c in comps]
    assert isinstance(gen.engine, Engine) and gen.engine.drafter is None
    json.dumps([c.to_json() for c in comps])
    for c in comps:  # wall clock (prefill + capture + decode) beside decode-only: never faster than it
        s = c.stats
        assert s["wall_tokens_per_s"] > 0 and s["wall_tokens_per_s"] <= s["tokens_per_s"]


def test_model_returns_the_features_a_drafter_declares(model):
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    m = CompactLM.from_hf(hf)
    m.setup_cache(1, 32)
    ids = torch.randint(0, V, (1, 9))
    pos = torch.arange(9)[None]
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True).hidden_states  # embeddings, layer 0, layer 1 (final-normed)
        _, final = m(ids, AttentionMeta.prompt(pos))
        _, feats = m(ids, AttentionMeta.prompt(pos), features=(0, -1))
    assert feats.shape == (2, 1, 9, 64)
    assert torch.allclose(feats[0], ref[1], atol=1e-5) and torch.equal(feats[1], final)


def test_medusa_drafter_saves_and_loads_itself_through_a_pack(model, tmp_path):
    d = MedusaDrafter(_heads(model), TREE)
    cfg, tensors = d.to_pack()
    path = save_pack(Pack("m", "fp", drafter=cfg, tensors=tensors, drafter_kind=d.kind), tmp_path / "d.safetensors")
    back = MedusaDrafter.from_pack(load_pack(path), model)
    assert back.tree.paths == d.tree.paths
    feats = torch.randn(1, 1, 64)
    root = torch.tensor([3])
    assert torch.equal(back.propose(root, feats), d.propose(root, feats))
