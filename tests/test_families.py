"""Model families: ModelArgs read once, the registry, and Qwen3 (q/k norm before RoPE) as the proof that a
family is one file: logits == transformers on both backends, greedy Medusa == plain greedy."""
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.attention_meta import AttentionMeta
from accel.runtime.decode import generate_plain
from accel.runtime.families import FAMILIES, ModelArgs, why_unsupported
from accel.runtime.medusa import generate_medusa
from accel.runtime.model import CompactLM

V = 97
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]


@pytest.fixture(scope="module")
def qwen3():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.2,
                      tie_word_embeddings=True, rope_theta=10000.0)
    hf = Qwen3ForCausalLM(cfg).eval()
    for layer in hf.model.layers:  # the norms are ones at init: make them matter
        layer.self_attn.q_norm.weight.data.uniform_(0.5, 1.5)
        layer.self_attn.k_norm.weight.data.uniform_(0.5, 1.5)
    return hf


def test_registry_and_model_args(qwen3):
    assert {"llama", "mistral", "qwen2", "qwen3"} <= set(FAMILIES)
    args = FAMILIES["qwen3"].args(qwen3.config)
    assert isinstance(args, ModelArgs) and args.qk_norm and not args.attention_bias
    assert (args.n_layer, args.n_head, args.n_kv, args.head_dim, args.hidden, args.vocab) == (2, 4, 2, 16, 64, V)
    m = CompactLM.from_hf(qwen3)
    assert m.args == args and m.family == "qwen3"

    class Gpt2:
        config = type("C", (), {"model_type": "gpt2"})()
    assert "not one of" in why_unsupported(Gpt2())


@pytest.mark.parametrize("backend", ["sdpa", "exact"])
def test_qwen3_logits_match_transformers(qwen3, backend):
    m = CompactLM.from_hf(qwen3)
    m.setup_cache(2, 64)
    ids = torch.randint(0, V, (2, 21))
    pos = torch.arange(21).expand(2, 21)
    with torch.no_grad():
        ref = qwen3(ids).logits
        logits, _ = m(ids, AttentionMeta.prompt(pos), backend=backend)
    assert torch.allclose(logits, ref, atol=1e-4, rtol=1e-4), (logits - ref).abs().max()


def test_qwen3_greedy_medusa_equals_plain(qwen3):
    m = CompactLM.from_hf(qwen3)
    torch.manual_seed(1)
    heads = MedusaHeads(MedusaConfig(num_heads=3, num_layers=1, hidden_size=64, vocab_size=V, projection="own"),
                        m.output.weight)
    for p in heads.parameters():
        p.data.normal_(0, 0.3)
    heads = heads.requires_grad_(False).eval()
    for prompt in ([1, 5, 7, 9, 11], [42, 3]):
        ref = generate_plain(m, [prompt], 30)[0].tokens
        assert generate_medusa(m, heads, prompt, 30, tree=TREE).tokens == ref


def test_unsupported_family_says_why_in_one_line_and_falls_back(tiny_model_dir):
    from accel.runtime.generate import GenerationConfig, Generator
    from accel.runtime.models import load_model
    from accel.runtime.prompts import Prompt

    lm = load_model(str(tiny_model_dir), device="cpu")
    lm.model.config.hidden_act = "gelu"  # a variant no family declares
    try:
        gen = Generator(lm, None, GenerationConfig(max_new_tokens=3, chat=False))
        assert gen.engine is None and gen.fallback_reason == "hidden_act 'gelu' (only 'silu')"
        [c] = gen.run([Prompt("x", prompt="hi")])
        assert c.stats["engine"] == "transformers" and c.stats["fallback"] == gen.fallback_reason
    finally:
        lm.model.config.hidden_act = "silu"
