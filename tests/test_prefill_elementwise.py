"""kernels.prefill_elementwise (a fresh prompt chunk's RoPE + cache write, SiLU*up, RMSNorm weight) against
the eager formulas they replace, and runtime.model.layer_forward's fused path against its eager one.

On the CPU the kernels run under TRITON_INTERPRET (tests/conftest.py); ``ACCEL_FUSED_PREFILL=1``
(``model.FUSED_PREFILL``) makes the CPU take the path CUDA takes by default.
"""
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from accel.kernels.prefill_elementwise import (rope_qkv, rope_qkv_reference, scale_rows, scale_rows_reference,
                                               silu_mul, silu_mul_reference)
from accel.runtime import model as model_mod
from accel.runtime.attention_meta import AttentionMeta
from accel.runtime.model import CompactLM

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _rope_inputs(B, T, Hq, Hkv, D, dt, seed=0, contiguous_qk=False):
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=g) * 3).to(DEV, dt)  # the qkv GEMM output
    qk = qkv[..., :(Hq + Hkv) * D].view(B, T, Hq + Hkv, D)  # strided views, read in place
    v = qkv[..., (Hq + Hkv) * D:].view(B, T, Hkv, D)
    if contiguous_qk:  # Qwen3: q/k come out of the per-head RMSNorm as a new tensor
        qk = qk.contiguous()
    pos = torch.arange(T)[None] + torch.arange(B)[:, None] * 5  # rows at different positions
    ang = pos[..., None].float() * (10000 ** -(torch.arange(D // 2) / (D // 2)))
    emb = torch.cat([ang, ang], -1)  # (B, T, D), rotate-half layout; fp32 tables cast like _layers_sdpa
    cos, sin = emb.cos().to(DEV, dt)[:, :, None], emb.sin().to(DEV, dt)[:, :, None]
    return qk, v, cos, sin, pos.to(DEV)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D", [(1, 37, 14, 2, 64), (2, 33, 6, 2, 16), (1, 5, 4, 4, 32)])
def test_rope_qkv_is_bit_identical_to_eager(dt, B, T, Hq, Hkv, D):
    qk, v, cos, sin, pos = _rope_inputs(B, T, Hq, Hkv, D, dt)
    rows = torch.arange(B, device=DEV)[:, None] + 1  # rows 1.. of a 4-row cache
    slots = pos + 3
    kc = torch.zeros(4, Hkv, 80, D, dtype=dt, device=DEV)
    vc = torch.zeros_like(kc)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q, k, vo = rope_qkv(qk, v, cos, sin, rows, slots, kc, vc, Hq, block_t=16)  # odd T: a partial block
    q_ref, k_ref, v_ref = rope_qkv_reference(qk, v, cos, sin, rows, slots, kc_ref, vc_ref, Hq)
    for got, ref in ((q, q_ref), (k, k_ref), (vo, v_ref), (kc, kc_ref), (vc, vc_ref)):
        assert got.shape == ref.shape and torch.equal(got, ref)
    # (B, H, T, D) views of dense (B, T, H, D) storage: attention outputs then come out (B, T, Hq*D)
    assert q.transpose(1, 2).is_contiguous() and k.transpose(1, 2).is_contiguous()


def test_rope_qkv_contiguous_qk_and_default_block():
    qk, v, cos, sin, pos = _rope_inputs(1, 70, 4, 2, 16, torch.bfloat16, seed=3, contiguous_qk=True)
    kc = torch.zeros(1, 2, 128, 16, dtype=torch.bfloat16, device=DEV)
    vc, kc_ref, vc_ref = torch.zeros_like(kc), kc.clone(), kc.clone()
    rows = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    got = rope_qkv(qk, v, cos, sin, rows, pos, kc, vc, 4)
    ref = rope_qkv_reference(qk, v, cos, sin, rows, pos, kc_ref, vc_ref, 4)
    assert all(torch.equal(a, b) for a, b in zip(got + (kc, vc), ref + (kc_ref, vc_ref)))


def test_rope_qkv_rejects_mismatched_shapes():
    qk, v, cos, sin, pos = _rope_inputs(1, 8, 4, 2, 16, torch.bfloat16)
    kc = torch.zeros(1, 2, 16, 16, dtype=torch.bfloat16, device=DEV)
    with pytest.raises(ValueError, match="do not fit"):
        rope_qkv(qk, v, cos[:, :4], sin[:, :4], torch.zeros(1, 1, dtype=torch.long), pos, kc, kc.clone(), 4)
    with pytest.raises(ValueError, match="mixed dtypes"):
        rope_qkv(qk, v, cos.float(), sin.float(), torch.zeros(1, 1, dtype=torch.long), pos, kc, kc.clone(), 4)


@pytest.mark.parametrize("dt", DTYPES)
def test_silu_mul_within_rounding_of_eager(dt):
    g = torch.Generator().manual_seed(1)
    gu = (torch.randn(2, 37, 2 * 200, generator=g) * 4).to(DEV, dt)  # I = 200: partial column blocks
    got, ref = silu_mul(gu, block_n=64), silu_mul_reference(gu)
    assert got.shape == ref.shape == (2, 37, 200)
    # the exp differs from PyTorch's in the last fp32 bit now and then (not on a GPU, where both are
    # libdevice/CUDA expf): a last-bit change of silu(g), carried through the product's rounding, is
    # two ulps of dt at most (ulp = 2^-7 .. 2^-8 of the value in bf16), and the bits almost always agree
    ulp = {torch.bfloat16: 2 ** -6, torch.float16: 2 ** -9, torch.float32: 2 ** -21}[dt]
    assert torch.allclose(got.float(), ref.float(), rtol=ulp, atol=1e-30)
    if dt != torch.float32:  # fp32 keeps exp's last bit; a 16-bit result almost always rounds it away
        assert (got != ref).float().mean() < 0.05
    # a strided input (not what the GEMM gives, but allowed) is copied, not misread
    wide = torch.cat([gu, gu], -1)[..., ::2]
    assert torch.allclose(silu_mul(wide).float(), silu_mul_reference(wide).float(), rtol=ulp, atol=1e-30)


def test_silu_mul_bf16_mostly_bit_identical():
    g = torch.Generator().manual_seed(2)
    gu = (torch.randn(64, 2 * 256, generator=g) * 3).to(DEV, torch.bfloat16)
    assert (silu_mul(gu) != silu_mul_reference(gu)).sum() <= 2


@pytest.mark.parametrize("dt", DTYPES)
def test_scale_rows_is_bit_identical(dt):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 41, 96, generator=g).to(DEV, dt)
    w = torch.randn(96, generator=g).to(DEV, dt)
    w[:16] = 1.5  # x * 1.5 lands on a rounding tie half the time: checks ties-to-even
    assert torch.equal(scale_rows(x, w, block_n=64), scale_rows_reference(x, w))
    with pytest.raises(ValueError):
        scale_rows(x, w.float() if dt != torch.float32 else w.half())


# -- layer_forward / CompactLM: the fused fresh-chunk path against the eager one ----------------------------
def _tiny(kind, dt):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.2,
                  tie_word_embeddings=True)
    if kind == "llama":
        hf = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":  # q/k/v bias
        hf = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        hf = Qwen3ForCausalLM(Qwen3Config(**common))
        for layer in hf.model.layers:  # ones at init: make the q/k norms matter
            layer.self_attn.q_norm.weight.data.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.data.uniform_(0.5, 1.5)
    for p in hf.parameters():  # RMSNorm weights are ones at init: make the weight multiply matter
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    return CompactLM.from_hf(hf.eval().to(dt).requires_grad_(False)).to(DEV)


def _prefill(m, ids, mode, monkeypatch):
    monkeypatch.setattr(model_mod, "FUSED_PREFILL", mode)
    m.setup_cache(1, 128)
    m.kv.zero_()
    T = ids.shape[1]
    logits, _ = m(ids, AttentionMeta.prompt(torch.arange(T, device=DEV)[None]))
    return logits, m.kv.clone()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_fused_prefill_is_bit_identical_with_eager_silu(kind, monkeypatch):
    """With SiLU*up taken from the eager formula, the fused fresh-chunk path (T > 64: causal, no mask)
    gives the eager path's bits: logits and every layer's KV cache."""
    m = _tiny(kind, torch.bfloat16)
    ids = torch.randint(0, 97, (1, 71), generator=torch.Generator().manual_seed(0)).to(DEV)
    ref_logits, ref_kv = _prefill(m, ids, "0", monkeypatch)
    import accel.kernels.prefill_elementwise as pe
    monkeypatch.setattr(pe, "silu_mul", silu_mul_reference)
    logits, kv = _prefill(m, ids, "1", monkeypatch)
    assert torch.equal(kv, ref_kv)
    assert torch.equal(logits, ref_logits)


def test_fused_sparse_prefill_is_bit_identical_with_eager_silu(monkeypatch):
    """The sparse plan's path (one sparse layer, one layer planned dense) on the fused kernels: the same bits."""
    from accel.kernels import HeadPattern
    from accel.runtime.prefill import PrefillPlan
    import accel.kernels.prefill_elementwise as pe

    m = _tiny("llama", torch.bfloat16)
    m.setup_cache(1, 256)
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(2)).to(DEV)
    pos = torch.arange(150, device=DEV)[None]
    out = {}
    for mode in ("0", "1"):
        monkeypatch.setattr(model_mod, "FUSED_PREFILL", mode)
        if mode == "1":
            monkeypatch.setattr(pe, "silu_mul", silu_mul_reference)
        stats = []
        plan = PrefillPlan([[HeadPattern("vertical_and_slash", 64, 64)] * 4, None], dense_above=None, stats=stats)
        m.kv.zero_()
        logits, _ = m(ids, AttentionMeta.prompt(pos, plan))
        out[mode] = logits, m.kv.clone(), stats
    assert out["0"][2] == out["1"][2] and out["1"][2][0]["sparse_heads"] == 4  # the same index, really sparse
    assert torch.equal(out["1"][1], out["0"][1])
    assert torch.equal(out["1"][0], out["0"][0])


def test_fused_prefill_close_with_triton_silu_and_decode_stays_eager(monkeypatch):
    m = _tiny("qwen2", torch.bfloat16)
    ids = torch.randint(0, 97, (1, 70), generator=torch.Generator().manual_seed(1)).to(DEV)
    ref_logits, ref_kv = _prefill(m, ids, "0", monkeypatch)
    logits, kv = _prefill(m, ids, "1", monkeypatch)
    assert torch.equal(kv[:, 0], ref_kv[:, 0])  # layer 0's k/v are computed before any SiLU
    assert torch.allclose(logits.float(), ref_logits.float(), atol=0.1, rtol=0.05)
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() > 0.9

    # a decode step (masked, CUDA-graph captured on a GPU) never takes the fused kernels
    import accel.kernels.prefill_elementwise as pe

    def boom(*a, **k):
        raise AssertionError("fused kernel on a decode step")
    for name in ("rope_qkv", "silu_mul", "scale_rows"):
        monkeypatch.setattr(pe, name, boom)
    step, _ = m(ids[:, -1:], AttentionMeta.causal(torch.tensor([[70]], device=DEV)))
    assert torch.isfinite(step.float()).all()


def test_fused_prefill_has_no_host_sync(monkeypatch):
    from .host_sync import no_host_sync

    m = _tiny("qwen3", torch.bfloat16)
    monkeypatch.setattr(model_mod, "FUSED_PREFILL", "1")
    m.setup_cache(1, 128)
    ids = torch.randint(0, 97, (1, 80), generator=torch.Generator().manual_seed(3)).to(DEV)
    meta = AttentionMeta.prompt(torch.arange(80, device=DEV)[None])
    with no_host_sync():
        m(ids, meta, last_only=True)


def test_fused_prefill_off_on_cpu_by_default(monkeypatch):
    monkeypatch.setattr(model_mod, "FUSED_PREFILL", None)
    monkeypatch.delenv("ACCEL_FUSED_PREFILL", raising=False)
    x = torch.zeros(1, 2, 8)
    assert model_mod._fused_fresh(x, 16) is False  # the CPU path stays eager
    monkeypatch.setenv("ACCEL_FUSED_PREFILL", "1")
    assert model_mod._fused_fresh(x.bfloat16(), 16) is True
    assert model_mod._fused_fresh(x.bfloat16(), 24) is False  # head_dim not a power of two: eager
    monkeypatch.setenv("ACCEL_FUSED_PREFILL", "0")
    assert model_mod._fused_fresh(x.bfloat16(), 16) is False
