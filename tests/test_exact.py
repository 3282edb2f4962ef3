"""Batch-invariant kernels and the exact decoding path built on them.

Kernels against float64 references; row results bit-identical whatever the number of rows or where
the keys sit in the cache; and generation: greedy Medusa == plain greedy == batched plain in bf16.
On the CPU the kernels run under TRITON_INTERPRET; on a GPU the same tests check the real kernels.
"""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.heads import MedusaConfig, MedusaHeads
from accel.kernels.invariant_linear import linear, linear_reference, linear_silu_mul, rms_norm, rms_norm_reference
from accel.kernels.tree_attention import rope_write, tree_attention, tree_attention_reference
from accel.runtime.decode import generate_plain
from accel.runtime.attention_meta import AttentionMeta
from accel.runtime.model import CompactLM
from accel.runtime.medusa import generate_medusa

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
V = 97
TREE = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 1, 0), (0, 0, 1), (2, 0)]


def ulps(dtype):  # tolerance relative to the output's magnitude: a few roundings of the activation dtype
    return 1e-5 if dtype == torch.float32 else 2e-2


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_kernels_match_float64(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 80, generator=g).to(DEV, dtype)
    w = torch.randn(100, 80, generator=g).to(DEV, dtype) / 9
    b = torch.randn(100, generator=g).to(DEV, dtype)
    r = torch.randn(37, 100, generator=g).to(DEV, dtype)
    for got, ref in [(linear(x, w), linear_reference(x, w)),
                     (linear(x, w, b, r), linear_reference(x, w, b, r)),
                     (linear_silu_mul(x, w), linear_reference(x, w, silu_mul=True))]:
        assert got.dtype == dtype
        err = (got.double() - ref).abs().max() / ref.abs().max()
        assert err < ulps(dtype), err
    nw = torch.randn(80, generator=g).to(DEV, dtype)
    ref = rms_norm_reference(x, nw, 1e-5)
    assert (rms_norm(x, nw, 1e-5).double() - ref).abs().max() / ref.abs().max() < ulps(dtype)
    with pytest.raises(ValueError, match="features"):
        linear(x, w[:, :50])


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_rows_are_batch_invariant(dtype):
    """Row i is bit-identical whether it is computed alone, in a batch of 5 or of 64."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 96, generator=g).to(DEV, dtype)
    w = torch.randn(200, 96, generator=g).to(DEV, dtype)
    full = linear(x, w)
    assert torch.equal(linear(x[3:4], w), full[3:4])
    assert torch.equal(linear(x[:5], w), full[:5])
    assert torch.equal(linear_silu_mul(x[7:8], w), linear_silu_mul(x, w)[7:8])
    # the larger row tiles big weights get (_row_tile): still invariant
    from accel.kernels.invariant_linear import _launch, _row_tile
    assert (_row_tile(4096, 14336), _row_tile(14336, 4096), _row_tile(960, 576)) == (64, 32, 16)
    for bm in (32, 64):
        assert torch.equal(_launch(x[3:4], w, None, None, False, None, bm), _launch(x, w, None, None, False, None, bm)[3:4])
    # split-K (chunks fixed by K, partials summed in order): still invariant, and still the product
    r = torch.randn(64, 200, generator=g).to(DEV, dtype)
    split = linear(x, w, residual=r, split_k=2)
    assert torch.equal(linear(x[3:4], w, residual=r[3:4], split_k=2), split[3:4])
    ref = linear_reference(x, w, residual=r)
    assert (split.double() - ref).abs().max() / ref.abs().max() < ulps(dtype)
    su = linear_silu_mul(x, w, split_k=2)
    assert torch.equal(linear_silu_mul(x[9:10], w, split_k=2), su[9:10])
    assert torch.allclose(su.double(), linear_reference(x, w, silu_mul=True), rtol=ulps(dtype) * 4,
                          atol=ulps(dtype) * 4)


def _random_layout(B, T, S, A, g):
    start = torch.tensor([0, 5, 2][:B])
    npre = torch.tensor([70, 130, 64][:B])
    anc = torch.stack([torch.stack([torch.randperm(40, generator=g)[:A] + 150 for _ in range(T)]) for _ in range(B)])
    nk = npre[:, None] + torch.randint(0, A + 1, (B, T), generator=g)
    return start.to(DEV), npre.to(DEV), nk.to(DEV), anc.to(DEV)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 2), (6, 2), (3, 3)])
def test_tree_attention_matches_float64(dtype, heads):
    Hq, Hkv = heads
    g = torch.Generator().manual_seed(2)
    B, T, D, S, A = 3, 9, 16, 200, 4
    kc = torch.randn(B, Hkv, S, D, generator=g).to(DEV, dtype)
    vc = torch.randn(B, Hkv, S, D, generator=g).to(DEV, dtype)
    q = torch.randn(B, T, Hq, D, generator=g).to(DEV, dtype)
    layout = _random_layout(B, T, S, A, g)
    out = tree_attention(q, kc, vc, *layout)
    ref = tree_attention_reference(q, kc, vc, *layout)
    assert (out.double() - ref).abs().max() < ulps(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tree_attention_is_invariant_to_slots_and_batch(dtype):
    """A query gives the same bits alone, inside a tile of other queries, and with its keys moved to
    contiguous slots (a 1-token decode step) instead of scattered ancestor slots (a tree node)."""
    g = torch.Generator().manual_seed(3)
    B, T, Hq, Hkv, D, S, A = 2, 9, 6, 2, 32, 256, 3
    kc = torch.randn(B, Hkv, S, D, generator=g).to(DEV, dtype)
    vc = torch.randn(B, Hkv, S, D, generator=g).to(DEV, dtype)
    q = torch.randn(B, T, Hq, D, generator=g).to(DEV, dtype)
    start, npre, nk, anc = _random_layout(B, T, S, A, g)
    nk = (npre[:, None] + A).expand(B, T).contiguous()  # every query uses all its ancestors
    out = tree_attention(q, kc, vc, start, npre, nk, anc)
    t = 4
    alone = tree_attention(q[:, t:t + 1], kc, vc, start, npre, nk[:, t:t + 1], anc[:, t:t + 1])
    assert torch.equal(alone, out[:, t:t + 1])
    # decode-style: copy the ancestors behind the prefix, then read everything as one contiguous range
    kc2, vc2 = kc.clone(), vc.clone()
    for b in range(B):
        dst = int(start[b]) + int(npre[b]) + torch.arange(A, device=DEV)
        kc2[b][:, dst], vc2[b][:, dst] = kc[b][:, anc[b, t]], vc[b][:, anc[b, t]]
    n = npre + A
    contiguous = tree_attention(q[:, t:t + 1], kc2, vc2, start, n, n[:, None])
    assert torch.equal(contiguous, out[:, t:t + 1])


def test_rope_write_matches_eager_rotation():
    from accel.runtime.model import _rotate_half

    g = torch.Generator().manual_seed(4)
    B, T, Hq, Hkv, D, S = 2, 3, 4, 2, 16, 32
    dt = torch.bfloat16
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=g).to(DEV, dt)
    ang = torch.outer(torch.arange(S, dtype=torch.float32), torch.rand(D // 2, generator=g))
    cos, sin = torch.cat([ang, ang], -1).cos().to(DEV), torch.cat([ang, ang], -1).sin().to(DEV)
    pos = torch.tensor([[0, 1, 2], [7, 8, 9]], device=DEV)
    slots = pos + 3
    kc = torch.zeros(B, Hkv, S, D, dtype=dt, device=DEV)
    vc = torch.zeros_like(kc)
    q = rope_write(qkv, cos, sin, pos, torch.arange(B, device=DEV), slots, kc, vc, Hq, Hkv)
    x = qkv.view(B, T, Hq + 2 * Hkv, D)
    c, s = cos[pos].to(dt)[:, :, None], sin[pos].to(dt)[:, :, None]
    ref = x * c + _rotate_half(x) * s  # transformers' bf16 op order
    # bit-exact on the GPU; the interpreter truncates fp32 -> bf16 instead of rounding to nearest
    same = torch.equal if DEV == "cuda" else (lambda a, b: torch.allclose(a.float(), b.float(), rtol=2 ** -6, atol=2 ** -6))
    assert same(q, ref[:, :, :Hq])
    for b in range(B):
        assert same(kc[b][:, slots[b]].transpose(0, 1), ref[b, :, Hq:Hq + Hkv])
        assert torch.equal(vc[b][:, slots[b]].transpose(0, 1), x[b, :, Hq + Hkv:])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      initializer_range=0.3, tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg).eval()
    fp32 = CompactLM.from_hf(hf)
    bf16 = CompactLM.from_hf(LlamaForCausalLM(cfg).eval().to(torch.bfloat16).requires_grad_(False))
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in fp32.state_dict().items()}, strict=False)
    return fp32.to(DEV), bf16.to(DEV)


def test_forward_exact_matches_forward(models):
    model = models[0]
    ids = torch.randint(0, V, (1, 12), device=DEV)
    pos = torch.arange(12, device=DEV)[None]
    model.setup_cache(1, 64)
    ref, _ = model(ids, pos)
    got, _ = model(ids, AttentionMeta.prompt(pos), backend="exact")
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)


def _heads(model, seed=1):
    torch.manual_seed(seed)
    h = MedusaHeads(MedusaConfig(num_heads=3, num_layers=1, hidden_size=96, vocab_size=V, projection="own"),
                    model.output.weight.float())
    for p in h.parameters():
        p.data.normal_(0, 0.3)
    return h.requires_grad_(False).eval().to(DEV, model.dtype)


def test_exact_bf16_medusa_equals_plain_and_batched(models):
    """The property the exact path exists for: in bf16, greedy Medusa (an 11-node tree spanning three
    attention tiles, and on a GPU the 63-node default tree), plain batch-1 and a left-padded batch
    give the same tokens. Kept short on the CPU, where every kernel goes through the interpreter."""
    model = models[1]
    n = 40 if DEV == "cuda" else 10
    prompts = [[1, 5, 7, 9, 11, 13, 2, 4], [42, 3]]
    heads = _heads(model)
    singles = [generate_plain(model, [p], n, compile="exact")[0].tokens for p in prompts]
    assert [r.tokens for r in generate_plain(model, prompts, n, compile="exact")] == singles
    for p, ref in zip(prompts, singles):
        assert generate_medusa(model, heads, p, n, tree=TREE, compile="exact").tokens == ref
    if DEV == "cuda":  # the 63-node tree takes ~40 s in the interpreter
        assert generate_medusa(model, heads, prompts[0], n, compile="exact").tokens == singles[0]
    assert not hasattr(model, "exact")  # the backend is the engine's, never state on the model
