"""Pins the self-distilled token ids on the tiny conftest model, so that moving heads/data.py onto the
runtime's prompt encoding, EOS ids and fingerprint (issue 11) cannot silently change the training data.

The numbers were recorded with the pre-refactor heads/data.py (its own chat encoding / EOS / generator)."""

import copy

import pytest

from accel.heads.data import self_distill

PRE = [[1, 50, 60, 70], [1, 80, 90], [1, 100, 110, 120, 130]]
CHAT = ["hello there", {"id": "a", "messages": [{"role": "user", "content": "hi"}]}, {"id": "b", "prompt": "count"}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):  # conftest: tiny random Llama + byte tokenizer with a chat template
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("engine", ["hf", "compact"])
def test_pretokenised_prompts_pinned(tiny, tmp_path, engine):
    model, _ = tiny
    out = self_distill(model, None, PRE, max_new_tokens=8, batch_size=2, cache_dir=tmp_path, fingerprint="f",
                       engine=engine)
    assert [e.ids for e in out] == [[1, 50, 60, 70] + [70] * 8, [1, 80, 90] + [90] * 8,
                                    [1, 100, 110, 120, 130] + [130] * 8]
    assert [e.mask for e in out] == [[0] * len(p) + [1] * 8 for p in PRE]


def test_generation_config_eos_list_cuts_after_first_eos(tiny, tmp_path):
    model, _ = tiny
    model = copy.deepcopy(model)
    model.generation_config.eos_token_id = [90, 4]
    out = self_distill(model, None, PRE, max_new_tokens=8, batch_size=3, cache_dir=tmp_path, fingerprint="f",
                       engine="hf")
    # the EOS token itself stays in the continuation (the heads learn to predict it)
    assert [e.ids for e in out] == [[1, 50, 60, 70] + [70] * 8, [1, 80, 90, 90], [1, 100, 110, 120, 130] + [130] * 8]


def test_chat_template_prompts_pinned(tiny, tmp_path):
    model, tok = tiny
    out = self_distill(model, tok, CHAT, max_new_tokens=6, batch_size=4, cache_dir=tmp_path, fingerprint="f")
    assert [(e.ids, e.mask) for e in out] == [
        ([3, 78, 75, 82, 82, 85, 227, 90, 78, 75, 88, 75, 6, 4] + [4] * 6, [0] * 14 + [1] * 6),
        ([3, 78, 79, 6, 4] + [4] * 6, [0] * 5 + [1] * 6),
        ([3, 73, 85, 91, 84, 90, 6, 4] + [4] * 6, [0] * 8 + [1] * 6)]


def test_no_template_prompts_use_plain_transcript_pinned(tiny, tmp_path):
    model, tok = tiny
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    out = self_distill(model, bare, CHAT, max_new_tokens=6, batch_size=4, cache_dir=tmp_path, fingerprint="f")
    user, assistant = [59, 89, 75, 88, 32, 227], [205, 39, 89, 89, 79, 89, 90, 71, 84, 90, 32]  # "User: ", "\nAssistant:"
    assert [e.ids for e in out] == [
        user + [78, 75, 82, 82, 85, 227, 90, 78, 75, 88, 75] + assistant + [32] * 6,
        user + [78, 79] + assistant + [32] * 6,
        user + [73, 85, 91, 84, 90] + assistant + [32] * 6]


def test_eos_ids_is_one_function_for_runtime_and_heads(tiny):
    from accel.runtime.models import LoadedModel, eos_ids

    model, tok = tiny
    model = copy.deepcopy(model)
    assert eos_ids(model, tok) == [2] and eos_ids(model) == [2]
    model.generation_config.eos_token_id = [90, 4]  # e.g. an end-of-turn token listed only here
    assert eos_ids(model, tok) == [2, 4, 90]
    assert LoadedModel(model, tok, "tiny", "fp").eos_ids == [2, 4, 90]


def test_default_cache_key_uses_runtime_fingerprint(tiny, tmp_path, monkeypatch):
    from accel.runtime.models import model_fingerprint

    model, _ = tiny
    first = self_distill(model, None, PRE[:1], max_new_tokens=3, cache_dir=tmp_path, engine="hf")
    monkeypatch.setattr(model, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    again = self_distill(model, None, PRE[:1], max_new_tokens=3, cache_dir=tmp_path, engine="hf",
                         fingerprint=model_fingerprint(model))
    assert [e.ids for e in again] == [e.ids for e in first]


def test_prompt_longer_than_context_keeps_its_newest_text(tiny, tmp_path):
    model, tok = tiny  # context 512
    (ex,) = self_distill(model, tok, ["x" * 300 + "y" * 400], max_new_tokens=12, cache_dir=tmp_path, fingerprint="f")
    n_prompt = ex.mask.index(1)
    assert n_prompt <= 512 - 12
    text = tok.decode(ex.ids[:n_prompt])
    assert text.startswith("<|user|>") and text.endswith("y" * 400 + "<|end|><|assistant|>")
