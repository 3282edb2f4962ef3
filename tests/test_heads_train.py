"""Medusa training: data parsing, self-distillation cache, loss offsets, learning, checkpoint/resume, errors.

Everything runs on a tiny random LlamaForCausalLM (vocab 128, hidden 32, 2 layers) and a tiny offline
word-level tokenizer, so no download is needed.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from accel.heads.data import (Example, HeadsDataError, load_builtin_prompts, load_data_file, load_prompt_file,
                              self_distill, to_examples)
from accel.runtime.drafters.medusa_heads import MedusaConfig, MedusaHeads
from accel.heads.train import (HeadsCheckpointError, HeadsConfigError, TrainConfig, base_hidden, head_loss,
                               train_heads)

V, H = 128, 32


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m = LlamaForCausalLM(cfg).eval()
    return m


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ("hello world how are you fine thanks what is two plus three five the cat sat on mat a dog ran "
             "fast tell me story once upon time there was").split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                unk_token="[UNK]")
    t.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]})
    t.chat_template = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    return t


def toy_sequences(n=64, length=40, seed=0):
    """Learnable: x_{t+1} = x_t + d (mod 100) + 10, with d in {1, 2, 3} fixed per sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x, d = int(torch.randint(0, 100, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        out.append([10 + (x + d * t) % 100 for t in range(length)])
    return out


def small_cfg(**kw):
    base = dict(num_heads=3, num_layers=1, projection="own", steps=12, batch_size=4, seq_len=32, lr=1e-2,
                warmup=2, grad_accum=2, eval_fraction=0.1, seed=0, checkpoint_every=4)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- files and prompts

def test_builtin_prompts():
    ps = load_builtin_prompts()
    assert len(ps) >= 400
    assert len({p["id"] for p in ps}) == len(ps)
    cats = {p["id"].rsplit("-", 1)[0] for p in ps}
    assert {"chat", "code", "math", "summarise", "translate", "reasoning", "writing", "trivia"} <= cats
    assert all(p["messages"][-1]["role"] == "user" for p in ps)


def test_prompt_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "prompt": "hi"}\n\n{"id": "b", "messages": [{"role": "user", "content": "yo"}]}\n')
    ps = load_prompt_file(f)
    assert ps == [{"id": "a", "messages": [{"role": "user", "content": "hi"}]},
                  {"id": "b", "messages": [{"role": "user", "content": "yo"}]}]
    for bad, match in [("", "empty"), ("{not json\n", "not valid JSON"), ('{"id": 1}\n', "prompt"),
                       ('{"id": 1, "prompt": "x"}\n{"id": 1, "prompt": "y"}\n', "duplicate"),
                       ('{"messages": [{"role": "user"}]}\n', "messages")]:
        f.write_text(bad)
        with pytest.raises(HeadsDataError, match=match):
            load_prompt_file(f)
    with pytest.raises(HeadsDataError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.jsonl")


def test_data_file(tmp_path):
    f = tmp_path / "d.txt"
    f.write_text("Once upon a time.\n\nThe end.\n")
    assert load_data_file(f) == ["Once upon a time.\n\nThe end.\n"]
    f.write_text('{"text": "a b"}\n{"messages": [{"role": "user", "content": "q"}, '
                 '{"role": "assistant", "content": "r"}]}\n')
    assert load_data_file(f) == ["a b", {"messages": [{"role": "user", "content": "q"},
                                                      {"role": "assistant", "content": "r"}]}]
    for bad, match in [("   \n", "empty"), ('{"text": "a"}\n{oops\n', ":2: not valid JSON"),
                       ('{"foo": 1}\n', "text"), ('{"text": ""}\n', "no non-empty")]:
        f.write_text(bad)
        with pytest.raises(HeadsDataError, match=match):
            load_data_file(f)
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(HeadsDataError, match="UTF-8"):
        load_data_file(f)
    assert issubclass(HeadsDataError, ValueError)


def test_to_examples_masks_assistant_turns(tokenizer):
    conv = {"messages": [{"role": "user", "content": "what is two plus three"},
                         {"role": "assistant", "content": "five"},
                         {"role": "user", "content": "thanks"},
                         {"role": "assistant", "content": "fine"}]}
    ex, txt, pre = to_examples(tokenizer, [conv, "the cat sat", [5, 6, 7]])
    trained = [t for t, m in zip(ex.ids, ex.mask) if m]
    assert tokenizer.convert_ids_to_tokens(trained) == ["five", "<|end|>", "fine", "<|end|>"]
    assert txt.mask == [1] * len(txt.ids) and pre.ids == [5, 6, 7]
    with pytest.raises(HeadsDataError, match="tokenizer"):
        to_examples(None, ["text"])


# ----------------------------------------------------------------------------- self-distillation

def test_self_distill_cache(model, tmp_path, monkeypatch):
    prompts = [[1, 5, 6, 7], [1, 8, 9], [1, 10, 11, 12, 13], [1, 4]]
    out = self_distill(model, None, prompts, max_new_tokens=6, batch_size=3, cache_dir=tmp_path, fingerprint="fp")
    assert len(out) == 4
    for p, ex in zip(prompts, out):
        assert ex.ids[: len(p)] == p
        assert ex.mask == [0] * len(p) + [1] * (len(ex.ids) - len(p))
        assert 1 <= len(ex.ids) - len(p) <= 6
    # greedy continuation matches an unbatched greedy generate (left padding is handled)
    ref = model.generate(torch.tensor([prompts[2]]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0].tolist()
    assert out[2].ids == ref[: len(out[2].ids)]
    # rerun: served from the cache, no generation
    monkeypatch.setattr(model, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    again = self_distill(model, None, prompts, max_new_tokens=6, batch_size=3, cache_dir=tmp_path, fingerprint="fp")
    assert [e.ids for e in again] == [e.ids for e in out]
    # a different fingerprint is a different cache entry
    with pytest.raises(AssertionError, match="regenerated"):
        self_distill(model, None, prompts, max_new_tokens=6, batch_size=3, cache_dir=tmp_path, fingerprint="other")


def test_self_distill_compact_engine_matches_hf(model, tmp_path):
    prompts = [[1, 5, 6, 7], [1, 8, 9], [1, 10, 11, 12, 13]]
    kw = dict(max_new_tokens=6, batch_size=3, fingerprint="fp")
    hf = self_distill(model, None, prompts, cache_dir=tmp_path / "hf", engine="hf", **kw)
    fast = self_distill(model, None, prompts, cache_dir=tmp_path / "compact", engine="compact", **kw)
    assert [e.ids for e in fast] == [e.ids for e in hf]


def test_self_distill_resumes_partial_cache(model, tmp_path):
    prompts = [[1, 5, 6], [1, 8, 9, 10], [1, 11]]
    full = self_distill(model, None, prompts, max_new_tokens=4, batch_size=2, cache_dir=tmp_path / "a", fingerprint="f")
    # simulate a kill after the first batch: only a partial file with one finished prompt + a torn line
    d = tmp_path / "b"
    self_distill(model, None, prompts, max_new_tokens=4, batch_size=2, cache_dir=d, fingerprint="f")
    final = next(p for p in d.glob("*.jsonl") if ".partial" not in p.name)
    lines = final.read_text().splitlines()
    final.unlink()
    final.with_name(final.name.replace(".jsonl", ".partial.jsonl")).write_text(lines[1] + "\n" + lines[0][:10])
    calls = []
    orig = model.generate
    model.generate = lambda *a, **k: calls.append(k["input_ids"].shape[0]) or orig(*a, **k)
    try:
        resumed = self_distill(model, None, prompts, max_new_tokens=4, batch_size=2, cache_dir=d, fingerprint="f")
    finally:
        del model.generate
    assert calls == [2]  # only the two unfinished prompts
    assert [e.ids for e in resumed] == [e.ids for e in full]


def test_self_distill_with_chat_template(model, tokenizer, tmp_path):
    prompts = [{"id": "x", "messages": [{"role": "user", "content": "tell me a story"}]}]
    (ex,) = self_distill(model, tokenizer, prompts, max_new_tokens=3, batch_size=4, cache_dir=tmp_path,
                         fingerprint="f")
    n_prompt = ex.mask.index(1)
    assert tokenizer.convert_ids_to_tokens(ex.ids[:n_prompt]) == [
        "<|user|>", "tell", "me", "a" if "a" in tokenizer.get_vocab() else "[UNK]", "story", "<|end|>",
        "<|assistant|>"]


# ----------------------------------------------------------------------------- loss and hidden states

def test_base_hidden_is_what_lm_head_consumes(model):
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    torch.testing.assert_close(model.lm_head(base_hidden(model, ids, None)), model(ids).logits)


@pytest.mark.parametrize("projection", ["shared", "own"])
def test_loss_offsets_match_naive_loop(model, projection):
    torch.manual_seed(1)
    heads = MedusaHeads(MedusaConfig(3, 1, H, V, projection), model.lm_head.weight)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, V, (2, 9))
    mask = torch.rand(2, 9) > 0.3
    hidden = base_hidden(model, ids, None).detach()
    got = head_loss(heads, hidden, ids, mask)
    logits = heads(hidden)  # (K, B, T, V)
    want = 0.0
    for k in range(3):
        terms = [F.cross_entropy(logits[k, b, t], ids[b, t + k + 2])  # head k at t predicts t+k+2
                 for b in range(2) for t in range(9) if t + k + 2 < 9 and mask[b, t + k + 2]]
        want = want + 0.8 ** k * torch.stack(terms).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training

# a frozen *random* 32-wide lm_head is a weak projection (the shared kind learns slowly on the toy);
# a head with its own projection learns the toy well
@pytest.mark.parametrize("projection,layers,ratio", [("shared", 2, 0.8), ("own", 1, 0.6)])
def test_loss_decreases_and_reports(model, projection, layers, ratio):
    cfg = small_cfg(projection=projection, num_layers=layers, steps=40, grad_accum=1, batch_size=8, lr=3e-2,
                    warmup=3)
    res = train_heads(model, None, toy_sequences(), cfg, fingerprint="tiny", progress=False)
    h = res.loss_history
    assert len(h) == 40
    assert sum(h[-5:]) / 5 < ratio * sum(h[:3]) / 3
    m = res.metrics
    assert len(m["top1"]) == len(m["top5"]) == 3 and m["tokens_per_s"] > 0 and m["wall_s"] > 0
    assert all(a5 >= a1 for a1, a5 in zip(m["top1"], m["top5"]))
    assert len(res.rank_acceptance) == 3 and all(len(r) == 10 for r in res.rank_acceptance)
    for k in range(3):
        assert abs(res.rank_acceptance[k][0] - m["top1"][k]) < 1e-3 and sum(res.rank_acceptance[k]) <= 1 + 1e-9
    json.dumps(m)  # goes into pack provenance
    # the base stays frozen and untouched
    assert not any(p.requires_grad for p in model.parameters())
    if projection == "own":
        assert m["top1"][0] > 0.15  # the toy is learnable (chance: 0.01)


def test_resume_after_kill_is_bitwise_identical(model, tmp_path):
    data = toy_sequences(40)
    ref = train_heads(model, None, data, small_cfg(checkpoint_dir=str(tmp_path / "ref")), fingerprint="fp",
                      progress=False)

    class Killed(Exception):
        pass

    def kill_at_7(step, info):
        if step == 7:
            raise Killed

    d = str(tmp_path / "run")
    with pytest.raises(Killed):
        train_heads(model, None, data, small_cfg(checkpoint_dir=d), fingerprint="fp", progress=False, on_step=kill_at_7)
    res = train_heads(model, None, data, small_cfg(checkpoint_dir=d, resume=True), fingerprint="fp", progress=False)
    assert res.metrics["resumed_from_step"] == 4  # last checkpoint before the kill
    assert res.loss_history == ref.loss_history
    a, b = ref.heads.state_dict(), res.heads.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.metrics["top1"] == ref.metrics["top1"]

    # incompatible checkpoints are refused with a how-to-fix message
    with pytest.raises(HeadsCheckpointError, match="fingerprint"):
        train_heads(model, None, data, small_cfg(checkpoint_dir=d, resume=True), fingerprint="other", progress=False)
    with pytest.raises(HeadsCheckpointError, match="heads"):
        train_heads(model, None, data, small_cfg(checkpoint_dir=d, resume=True, num_layers=2), fingerprint="fp",
                    progress=False)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(HeadsCheckpointError, match="cannot read"):
        train_heads(model, None, data, small_cfg(checkpoint_dir=d, resume=True), fingerprint="fp", progress=False)
    assert not list((tmp_path / "run").glob("*.tmp*"))  # atomic writes leave no temp files


def test_bad_inputs(model):
    with pytest.raises(HeadsDataError, match="no usable"):
        train_heads(model, None, [], small_cfg(), progress=False)
    with pytest.raises(HeadsDataError, match="no usable"):
        train_heads(model, None, [[5]], small_cfg(), progress=False)
    with pytest.raises(HeadsConfigError, match="lower batch_size"):
        train_heads(model, None, toy_sequences(3), small_cfg(batch_size=8), progress=False)
    with pytest.raises(HeadsConfigError, match="seq_len"):
        train_heads(model, None, toy_sequences(), small_cfg(seq_len=3), progress=False)
    with pytest.raises(HeadsConfigError, match="projection"):
        train_heads(model, None, toy_sequences(), small_cfg(projection="tied"), progress=False)
    with pytest.raises(HeadsConfigError, match="checkpoint_dir"):
        train_heads(model, None, toy_sequences(), small_cfg(resume=True), progress=False)
    assert issubclass(HeadsConfigError, ValueError) and issubclass(HeadsCheckpointError, ValueError)
    from accel.runtime.errors import AccelError  # the CLI prints these as one-line errors
    assert issubclass(HeadsConfigError, AccelError) and issubclass(HeadsDataError, AccelError)


def test_held_out_split_keeps_examples_whole():
    from accel.heads.train import _chunks, _split
    exs = [Example(list(range(10, 10 + n))) for n in range(20, 60, 2)]  # 20 examples, some cut into windows
    train, held = _split(_chunks(exs, 16, 2), 0.2, seed=0, cap=100)
    assert held and train and not {c.src for c in train} & {c.src for c in held}
    assert len({c.src for c in held}) == 4


def test_trains_on_distilled_examples_and_text(model, tokenizer):
    # masked examples: prompt tokens are never targets, so a batch of prompt-only windows is skipped
    exs = [Example([1] + s[:10] + s[10:], [0] * 11 + [1] * (len(s) - 10)) for s in toy_sequences(30)]
    res = train_heads(model, None, exs, small_cfg(steps=3, seq_len=16), progress=False)
    assert res.metrics["train_sequences"] > 0
    texts = ["the cat sat on the mat " * 8, "once upon a time there was a dog " * 8] * 6
    res = train_heads(model, tokenizer, texts, small_cfg(steps=2, batch_size=2), progress=False)
    assert res.metrics["steps"] == 2


def test_bf16_paths_run_on_cpu(model):
    # the CUDA recipe (bf16 autocast) and a bf16 base model without autocast both work device-agnostically
    res = train_heads(model, None, toy_sequences(16), small_cfg(steps=2, precision="bf16"), progress=False)
    assert all(v == v for v in res.loss_history)  # no NaN
    import copy
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    res = train_heads(m16, None, toy_sequences(16), small_cfg(steps=2, projection="shared"), progress=False)
    assert next(res.heads.parameters()).dtype == torch.float32  # fp32 master weights
    assert res.heads.shared_lm_head.data_ptr() == m16.lm_head.weight.data_ptr()  # shared, not copied
