"""MedusaHeads module: identity at init, shapes, both projection kinds, vLLM parameter names."""

import pytest
import torch

from accel.runtime.drafters.medusa_heads import MedusaConfig, MedusaHeads

H, V = 32, 128


@pytest.fixture
def lm_w():
    torch.manual_seed(0)
    return torch.randn(V, H)


@pytest.mark.parametrize("projection", ["shared", "own"])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_identity_at_init(lm_w, projection, layers):
    heads = MedusaHeads(MedusaConfig(3, layers, H, V, projection), lm_w)
    x = torch.randn(2, 5, H)
    out = heads(x)
    assert out.shape == (3, 2, 5, V)
    base = x @ lm_w.t()  # the base lm_head's logits on the same hidden state
    for k in range(3):
        torch.testing.assert_close(out[k], base, rtol=1e-5, atol=1e-5)


def test_param_names_follow_vllm(lm_w):
    own = MedusaHeads(MedusaConfig(2, 2, H, V, "own"), lm_w)
    assert set(own.state_dict()) == {
        *(f"blocks.{i}.layers.{j}.{p}" for i in range(2) for j in range(2) for p in ("weight", "bias")),
        "lm_heads.0.weight", "lm_heads.1.weight"}
    shared = MedusaHeads(MedusaConfig(2, 1, H, V, "shared"), lm_w)
    # the shared lm_head is the base model's: never saved, never trained
    assert set(shared.state_dict()) == {f"blocks.{i}.layers.0.{p}" for i in range(2) for p in ("weight", "bias")}
    assert all("lm_head" not in n for n, _ in shared.named_parameters())


def test_heads_diverge_after_update(lm_w):
    heads = MedusaHeads(MedusaConfig(2, 1, H, V, "shared"), lm_w)
    with torch.no_grad():
        heads.blocks[1].layers[0].weight.normal_()
    x = torch.randn(1, 3, H)
    out = heads(x)
    torch.testing.assert_close(out[0], x @ lm_w.t())
    assert not torch.allclose(out[1], x @ lm_w.t())


def test_attach_lm_head_and_config_roundtrip(lm_w):
    cfg = MedusaConfig(2, 1, H, V, "shared")
    assert MedusaConfig.from_dict(cfg.to_dict()) == cfg
    heads = MedusaHeads(cfg, lm_w)
    w2 = torch.randn(V, H)
    heads.attach_lm_head(w2)
    x = torch.randn(1, 2, H)
    torch.testing.assert_close(heads(x)[0], x @ w2.t())


def test_bad_config(lm_w):
    with pytest.raises(ValueError):
        MedusaConfig(projection="tied")
    with pytest.raises(ValueError):
        MedusaConfig(num_heads=0)
    with pytest.raises(ValueError):
        MedusaHeads(MedusaConfig(2, 1, H, V, "shared"))  # shared needs the base lm_head
    with pytest.raises(ValueError):
        MedusaHeads(MedusaConfig(2, 1, H, V, "own"), torch.randn(V, H + 1))
