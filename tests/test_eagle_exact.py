"""EAGLE on the exact (batch-invariant) path: in bf16 greedy EAGLE == plain greedy, features forward == the
model's exact forward. On the CPU the kernels run in the Triton interpreter, so this stays short."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.runtime.decode import generate_plain
from accel.runtime.drafters.eagle import EagleConfig, EagleDraft
from accel.runtime.attention_meta import AttentionMeta
from accel.runtime.drafters.eagle_decode import forward_features, generate_eagle
from accel.runtime.model import CompactLM

DEV = "cuda" if torch.cuda.is_available() else "cpu"
V = 97


@pytest.fixture(scope="module")
def bf16():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=96, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      initializer_range=0.3, tie_word_embeddings=True)
    return CompactLM.from_hf(LlamaForCausalLM(cfg).eval().to(torch.bfloat16).requires_grad_(False)).to(DEV)


def test_exact_features_forward_is_the_models(bf16):
    ids = torch.randint(0, V, (1, 9), device=DEV)
    pos = torch.arange(9, device=DEV)[None]
    zero = torch.zeros(1, dtype=torch.long, device=DEV)
    bf16.setup_cache(1, 64)
    meta = AttentionMeta.causal(pos)
    ref, hid = bf16(ids, meta, backend="exact")
    got, hid2, feats = forward_features(bf16, (1, 2, 2), ids, meta, backend="exact")
    assert torch.equal(got, ref) and torch.equal(hid, hid2) and feats.shape == (1, 9, 3 * 96)


def test_exact_bf16_eagle_equals_plain(bf16):
    n = 40 if DEV == "cuda" else 8
    d = EagleDraft(EagleConfig.for_base(bf16, intermediate_size=64), bf16.tok_embeddings, bf16.output.weight)
    d = d.init_weights(1, 0.3).to(DEV, torch.bfloat16).eval()
    prompts = [[1, 5, 7, 9, 11, 13, 2, 4], [42, 3]]
    for p in prompts if DEV == "cuda" else prompts[:1]:  # ~30 s per prompt in the interpreter
        ref = generate_plain(bf16, [p], n, compile="exact")[0].tokens
        assert generate_eagle(bf16, d, p, n, top_k=3, depth=3, num_nodes=8, compile="exact").tokens == ref
    assert not getattr(bf16, "exact", False)  # nothing is switched on the model


def test_exact_bf16_static_step_through_the_engine_equals_plain(bf16):
    """The step the GPU captures (exact kernels reading the dynamic tree's ancestors as data), run eagerly."""
    from accel.runtime.drafters import EagleDrafter
    from accel.runtime.engine import Engine, Sampling

    n = 40 if DEV == "cuda" else 6
    d = EagleDraft(EagleConfig.for_base(bf16, intermediate_size=64), bf16.tok_embeddings, bf16.output.weight)
    d = d.init_weights(1, 0.3).to(DEV, torch.bfloat16).eval()
    p = [1, 5, 7, 9, 11, 13, 2, 4]
    ref = generate_plain(bf16, [p], n, compile="exact")[0].tokens
    got = Engine(bf16, EagleDrafter(d, top_k=3, depth=3, num_nodes=8), mode="exact").generate([p], Sampling(n))[0]
    assert got.tokens == ref
