"""Compact model == transformers (fp32), cache consistency, sparse-prefill hook."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from accel.runtime.families import rope_inv_freq
from accel.runtime.attention_meta import AttentionMeta
from accel.runtime.model import CompactLM, supports
from accel.runtime.prefill import PrefillPlan, plan_prefill

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0}


def tiny(kind="llama", **kw):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
    common.update(kw)
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(**common))
    else:
        m = Qwen2ForCausalLM(Qwen2Config(**common))
        for layer in m.model.layers:  # qkv biases are zero at init: make them matter
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.data.normal_(0, 0.5)
    return m.eval()


@pytest.mark.parametrize("kind,kw", [("llama", {"rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": False}),
                                     ("llama", {"tie_word_embeddings": True}),
                                     ("qwen2", {"tie_word_embeddings": True})])
def test_logits_match_transformers(kind, kw):
    hf = tiny(kind, **kw)
    m = CompactLM.from_hf(hf)
    m.setup_cache(2, 64)
    ids = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        ref = hf(ids).logits
        logits, hidden = m(ids, torch.arange(21).expand(2, 21))
    assert torch.allclose(logits, ref, atol=1e-4, rtol=1e-4), (logits - ref).abs().max()
    assert hidden.shape == (2, 21, 64)
    assert torch.equal(m.inv_freq, hf.model.rotary_emb.inv_freq)


def test_weights_shared_and_tied():
    hf = tiny(tie_word_embeddings=True)
    m = CompactLM.from_hf(hf)
    assert m.output.weight is m.tok_embeddings
    assert m.layers[0].wo.weight.data_ptr() == hf.model.layers[0].self_attn.o_proj.weight.data_ptr()
    assert hf.lm_head.weight.requires_grad  # the HF model is left as it was


def test_prefill_then_decode_equals_full_forward():
    hf = tiny()
    m = CompactLM.from_hf(hf)
    m.setup_cache(1, 40)
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        full, _ = m(ids, torch.arange(16)[None])
        pre, _ = m(ids[:, :10], torch.arange(10)[None])
        steps = [m(ids[:, t:t + 1], torch.tensor([[t]]))[0] for t in range(10, 16)]
    got = torch.cat([pre] + steps, dim=1)
    assert torch.allclose(got, full, atol=1e-5)


def test_supports_and_errors():
    assert supports(tiny()) and supports(tiny("qwen2"))

    class Fake:
        config = type("C", (), {"model_type": "gpt2"})()
    assert not supports(Fake())
    with pytest.raises(ValueError, match="fallback"):
        CompactLM.from_hf(Fake())
    cfg = LlamaConfig(head_dim=16, hidden_size=64, num_attention_heads=4)
    cfg.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(NotImplementedError, match="yarn"):
        rope_inv_freq(cfg, 16)
    m = CompactLM.from_hf(tiny())
    with pytest.raises(RuntimeError, match="setup_cache"):
        m(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long))


def _dense_causal(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def test_sparse_prefill_hook(monkeypatch):
    import accel.kernels as kernels
    calls = []

    def fake(q, k, v, patterns, **kw):
        calls.append((q.shape, k.shape, patterns))
        return _dense_causal(q, k, v)
    monkeypatch.setattr(kernels, "sparse_attention", fake, raising=False)
    # 40 tokens are one 64-block: every pattern is predicted to cost dense work; keep them sparse here
    import accel.runtime.prefill as prefill_mod
    monkeypatch.setattr(prefill_mod, "DEFAULT_DENSE_ABOVE", 1.0)
    hf = tiny()
    m = CompactLM.from_hf(hf)
    m.setup_cache(1, 64)
    ids = torch.randint(0, 97, (1, 40))
    pos = torch.arange(40)[None]
    pack = type("P", (), {"has_patterns": True, "patterns": [{"0": ["dense", 0, 0]}] * 2, "patterns_info": {},
                          "layer_patterns": lambda self, i: [["stream_llm", 4, 4 + i, 0.0]] * 4})()
    with torch.no_grad():
        dense, _ = m(ids, pos)
        sparse, _ = m(ids, AttentionMeta.prompt(pos, plan_prefill(pack, 40, "cpu", override=32)))
        short = plan_prefill(pack, 8, "cpu", override=32)  # shorter than the threshold: dense path
        m(ids[:, :8], AttentionMeta.prompt(pos[:, :8], short))
    assert [c[2] for c in calls] == [[["stream_llm", 4, 4 + i, 0.0]] * 4 for i in range(2)]
    assert calls[0][0] == (1, 4, 40, 16) and calls[0][1] == (1, 2, 40, 16)
    assert torch.allclose(sparse, dense, atol=1e-5)


def test_sparse_prefill_real_kernel_dense_patterns():
    kernels = pytest.importorskip("accel.kernels")
    hf = tiny()
    m = CompactLM.from_hf(hf)
    m.setup_cache(1, 128)
    ids = torch.randint(0, 97, (1, 96))
    pos = torch.arange(96)[None]
    with torch.no_grad():
        dense, _ = m(ids, pos)
        plan = PrefillPlan([[kernels.HeadPattern("dense")] * 4 for _ in range(2)])
        sparse, _ = m(ids, AttentionMeta.prompt(pos, plan))
    assert torch.allclose(sparse, dense, atol=1e-4)
