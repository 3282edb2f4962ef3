"""The generate pipeline end to end: pack loading, Medusa exactness, sparse prefill, batching."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.cli import app
from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.generate import GenerationConfig, Generator
from accel.runtime.models import load_model
from accel.runtime.pack import Pack, save_pack
from accel.runtime.prompts import Prompt

runner = CliRunner()


def _random_heads_pack(lm, path, num_heads=3, scale=0.5, patterns=None, seed=0):
    cfg = lm.model.config
    mc = MedusaConfig(num_heads=num_heads, num_layers=1, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size,
                      projection="shared")
    heads = MedusaHeads(mc, lm.model.get_output_embeddings().weight)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    medusa = {**mc.to_dict(), "tree": [[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]}
    return save_pack(Pack(lm.name, lm.fingerprint, patterns=patterns, medusa=medusa, heads=heads.state_dict()), path)


def _gen(args):
    r = runner.invoke(app, list(map(str, args)))
    assert r.exit_code == 0, r.output
    return r


def test_cli_medusa_greedy_equals_plain(tiny_model_dir, tmp_path):
    lm = load_model(str(tiny_model_dir), device="cpu")
    pack = _random_heads_pack(lm, tmp_path / "p.safetensors")
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in enumerate(["hello", "abc", "a much longer prompt here"])))
    common = ["generate", "--prompt-file", f, "--model", tiny_model_dir, "-n", 24]
    _gen([*common, "--pack", pack, "--medusa", "-o", tmp_path / "medusa.jsonl"])
    _gen([*common, "--pack", pack, "--no-medusa", "-o", tmp_path / "plain.jsonl"])
    _gen([*common, "-o", tmp_path / "nopack.jsonl"])
    rows = {k: [json.loads(l) for l in (tmp_path / f"{k}.jsonl").read_text().splitlines()]
            for k in ("medusa", "plain", "nopack")}
    assert [r["text"] for r in rows["medusa"]] == [r["text"] for r in rows["plain"]] == [r["text"] for r in rows["nopack"]]
    assert all(r["stats"]["engine"] == "compact+medusa" for r in rows["medusa"])
    assert all("accepted_per_step" in r["stats"] for r in rows["medusa"])


def test_sparse_prefill_keep_all_equals_dense_and_sparse_runs(tiny_model_dir, tmp_path, monkeypatch):
    # ~40 tokens are one 64-block: the plan would predict dense work for every pattern and run dense;
    # keep the sparse kernels on so that keep-all is really compared with dense here
    import accel.runtime.prefill as prefill_mod
    monkeypatch.setattr(prefill_mod, "DEFAULT_DENSE_ABOVE", 1.0)
    lm = load_model(str(tiny_model_dir), device="cpu")
    L, H = lm.model.config.num_hidden_layers, lm.model.config.num_attention_heads
    keep_all = [{str(h): ["vertical_and_slash", 4096, 4096, 1.0] for h in range(H)} for _ in range(L)]
    sparse = [{str(h): (["stream_llm", 16, 32, 0.5] if h % 2 else ["block_sparse", 1, 0, 0.5]) for h in range(H)} for _ in range(L)]
    prompt = [Prompt("x", prompt="the quick brown fox jumps over the lazy dog " * 4)]
    texts = {}
    for name, pats in (("dense", None), ("keep_all", keep_all), ("sparse", sparse)):
        pack = None
        if pats is not None:
            pack = save_pack(Pack(lm.name, lm.fingerprint, patterns=pats, patterns_info={"seq_len": 180}),
                             tmp_path / f"{name}.safetensors")
        gen = Generator.load(str(tiny_model_dir), pack=pack, device="cpu",
                             config=GenerationConfig(max_new_tokens=8, sparse_min_len=16, chat=False))
        [c] = gen.run(prompt)
        texts[name] = c.tokens
        if pats is not None:
            assert c.stats["attention_density"] is not None
    assert texts["keep_all"] == texts["dense"]
    assert len(texts["sparse"]) > 0


@pytest.mark.model
def test_real_model_medusa_greedy_is_exact(smollm2, tmp_path):
    pack = _random_heads_pack(smollm2, tmp_path / "p.safetensors", num_heads=4, scale=0.02)
    prompts = [Prompt("a", messages=[{"role": "user", "content": "List three primary colours."}])]
    load_pack = __import__("accel.runtime.pack", fromlist=["load_pack"]).load_pack
    medusa = Generator(smollm2, load_pack(pack), GenerationConfig(max_new_tokens=24, medusa=True))
    plain = Generator(smollm2, None, GenerationConfig(max_new_tokens=24))
    assert medusa.use_medusa and not plain.use_medusa
    assert medusa.run(prompts)[0].tokens == plain.run(prompts)[0].tokens


def test_runtime_scales_pack_patterns_to_prompt_length():
    from accel.runtime.prefill import layer_patterns

    pats = [{"0": ["vertical_and_slash", 100, 400, 0.9], "1": ["stream_llm", 64, 512, 0.9]}]
    prop = Pack("m", "fp", patterns=pats, patterns_info={"seq_len": 4096, "scaling": "proportional"})
    absolute = Pack("m", "fp", patterns=pats, patterns_info={"seq_len": 4096, "scaling": "absolute"})
    vs, a = layer_patterns(prop, 8192)[0]
    assert (vs.size_1, vs.size_2) == (200, 800) and (a.size_1, a.size_2) == (64, 1024)  # sink stays absolute
    vs, a = layer_patterns(absolute, 8192)[0]
    assert (vs.size_1, vs.size_2, a.size_2) == (100, 400, 512)
    assert layer_patterns(prop, 4096)[0][0].size_1 == 100


def test_transformers_fallback_with_sparse_hook(tiny_model_dir, tmp_path):
    """Architectures the compact engine does not cover run transformers' generate with the kernels' hook."""
    lm = load_model(str(tiny_model_dir), device="cpu")
    L, H = lm.model.config.num_hidden_layers, lm.model.config.num_attention_heads
    keep_all = [{str(h): ["stream_llm", 4096, 4096, 1.0] for h in range(H)} for _ in range(L)]
    pack = Pack(lm.name, lm.fingerprint, patterns=keep_all, patterns_info={"seq_len": 64})
    prompt = [Prompt("x", prompt="the quick brown fox jumps over the lazy dog " * 3)]
    cfg = GenerationConfig(max_new_tokens=6, sparse_min_len=16, chat=False)
    dense = Generator(lm, None, cfg, transformers=True)
    want = dense.run(prompt)[0].tokens
    sparse = Generator(lm, pack, cfg, transformers=True)
    got = sparse.run(prompt)[0].tokens
    from accel.kernels.hook import disable_sparse_prefill, sparse_calls

    assert sparse_calls(lm.model) > 0  # the prompt really went through the sparse kernels
    disable_sparse_prefill(lm.model)
    assert got == want


@pytest.mark.model
def test_shipped_default_pack_fits_the_default_model(smollm2):
    """The committed pack: patterns for all 30x9 heads, 4 heads, a tree, the exact commands, and the
    fingerprint of the embedded weights (so `accel generate` picks it up with no --pack)."""
    from accel.runtime.generate import default_pack_path
    from accel.runtime.pack import load_pack, validate_for_model

    path = default_pack_path()
    assert path is not None and path.stat().st_size <= 10_000_000
    pack = load_pack(path)
    validate_for_model(pack, smollm2.model, smollm2.fingerprint)
    assert len(pack.patterns) == 30 and all(len(layer) == 9 for layer in pack.patterns)
    assert pack.medusa["num_heads"] == 4 and len(pack.medusa["tree"]) == 63
    assert "accel train-heads" in pack.provenance["commands"]["train_heads"]
    assert "accel search-patterns" in pack.provenance["commands"]["search_patterns"]
    gen = Generator.load("smollm2-135m", device="cpu", config=GenerationConfig(max_new_tokens=4))
    assert gen.pack is not None and gen.pack.fingerprint == smollm2.fingerprint
