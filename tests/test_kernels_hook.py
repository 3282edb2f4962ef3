"""transformers hook: a tiny random Llama uses per-layer / per-head patterns for prefill only."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from accel.kernels import HeadPattern, enable_sparse_prefill, kept_mask  # noqa: E402
from accel.kernels.hook import disable_sparse_prefill, sparse_calls  # noqa: E402
from accel.kernels import build_index  # noqa: E402
from accel.kernels.reference import sparse_attention_reference  # noqa: E402


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    m = LlamaForCausalLM(cfg).eval()
    m.set_attn_implementation("sdpa")
    return m


SPARSE = [
    [HeadPattern("vertical_and_slash", 6, 10), HeadPattern("stream_llm", 4, 16),
     HeadPattern("block_sparse", 2), HeadPattern("dense")],
    [HeadPattern("stream_llm", 16, 16)] * 2 + [HeadPattern("vertical_and_slash", 20, 30)] * 2,
]


def test_mask_interface_registered():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    m = tiny_llama()
    enable_sparse_prefill(m, SPARSE, min_len=16, block_m=16, block_n=16)
    assert m.config._attn_implementation == "accel_sparse"
    assert "accel_sparse" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    assert "accel_sparse" in ALL_ATTENTION_FUNCTIONS


def test_keep_everything_equals_sdpa_logits():
    m = tiny_llama()
    ids = torch.randint(0, 128, (2, 150))
    with torch.no_grad():
        ref = m(ids).logits
    keep_all = [[HeadPattern("vertical_and_slash", 150, 150), HeadPattern("stream_llm", 0, 150),
                 HeadPattern("block_sparse", 100), HeadPattern("dense")]] * 2
    enable_sparse_prefill(m, keep_all, min_len=16, block_m=16, block_n=16)
    with torch.no_grad():
        out = m(ids).logits
    assert sparse_calls(m) == 2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _manual_logits(m, ids, layer_patterns, bm, bn):
    """Run the model layer by layer with our own attention (reference + build_index) in place of
    transformers' dispatch, via forward hooks on q/k/v projections -> a truly independent path."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    B, N = ids.shape
    model = m.model
    h = model.embed_tokens(ids)
    pos = torch.arange(N)[None].expand(B, N)
    cos, sin = model.rotary_emb(h, pos)
    for li, layer in enumerate(model.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        D = attn.head_dim
        q = attn.q_proj(x).view(B, N, -1, D).transpose(1, 2)
        k = attn.k_proj(x).view(B, N, -1, D).transpose(1, 2)
        v = attn.v_proj(x).view(B, N, -1, D).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        idx = build_index(q, k, layer_patterns[li], block_m=bm, block_n=bn, scale=attn.scaling)
        o = sparse_attention_reference(q.double(), k.double(), v.double(), idx, scale=attn.scaling)
        o = o.float().transpose(1, 2).reshape(B, N, -1)
        h = h + attn.o_proj(o)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return m.lm_head(model.norm(h))


def test_sparse_patterns_equal_manual_reference():
    m = tiny_llama(1)
    ids = torch.randint(0, 128, (2, 170))
    enable_sparse_prefill(m, SPARSE, min_len=16, block_m=16, block_n=16)
    with torch.no_grad():
        out = m(ids).logits
        manual = _manual_logits(m, ids, SPARSE, 16, 16)
        disable_sparse_prefill(m)
        dense = m(ids).logits
    assert m.config._attn_implementation == "sdpa"
    torch.testing.assert_close(out, manual, atol=2e-5, rtol=1e-4)
    assert (out - dense).abs().max() > 1e-3, "sparse patterns should change the logits"


def test_short_inputs_and_decoding_stay_dense():
    m = tiny_llama(2)
    ids = torch.randint(0, 128, (1, 40))
    with torch.no_grad():
        ref = m.generate(ids, max_new_tokens=6, do_sample=False)
        ref_logits = m(ids).logits
    sparse = [[HeadPattern("stream_llm", 4, 8)] * 4] * 2
    enable_sparse_prefill(m, sparse, min_len=64, block_m=16, block_n=16)
    with torch.no_grad():
        short = m(ids).logits
        assert sparse_calls(m) == 0  # below min_len: dense
        torch.testing.assert_close(short, ref_logits)
    enable_sparse_prefill(m, sparse, min_len=16, block_m=16, block_n=16)
    with torch.no_grad():
        gen = m.generate(ids, max_new_tokens=6, do_sample=False)
    assert sparse_calls(m) == 2  # prefill only: one call per layer, decoding steps stay dense
    assert gen.shape == ref.shape


def test_padding_mask_falls_back_to_dense():
    m = tiny_llama(3)
    ids = torch.randint(0, 128, (2, 60))
    am = torch.ones(2, 60, dtype=torch.long)
    am[1, :10] = 0
    with torch.no_grad():
        ref = m(ids, attention_mask=am).logits
        enable_sparse_prefill(m, [[HeadPattern("stream_llm", 4, 8)] * 4] * 2, min_len=16,
                              block_m=16, block_n=16)
        out = m(ids, attention_mask=am).logits
    assert sparse_calls(m) == 0
    torch.testing.assert_close(out, ref)


def test_minference_config_and_layer_count_check():
    m = tiny_llama()
    cfg = [{str(h): ["stream_llm", 4, 16, 0.0] for h in range(4)}] * 2
    enable_sparse_prefill(m, cfg, min_len=16, block_m=16, block_n=16)
    with pytest.raises(ValueError, match="layer entries"):
        enable_sparse_prefill(m, cfg[:1], min_len=16)


def test_capture_qk_sees_every_layer_and_keeps_the_dense_forward():
    """The search's q/k capture goes through the hook's one registration and changes no output."""
    from accel.kernels.hook import capture_qk

    m = tiny_llama()
    ids = torch.randint(0, 128, (1, 40))
    with torch.no_grad():
        want = m(ids).logits
        seen = []
        with capture_qk(m, lambda li, q, k, s: seen.append((li, tuple(q.shape), tuple(k.shape)))):
            assert m.config._attn_implementation == "accel_capture"
            got = m(ids).logits
    assert m.config._attn_implementation == "sdpa"                                    # restored
    assert seen == [(0, (1, 4, 40, 16), (1, 2, 40, 16)), (1, (1, 4, 40, 16), (1, 2, 40, 16))]
    assert torch.equal(got, want)
