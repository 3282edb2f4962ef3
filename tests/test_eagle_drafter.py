"""EAGLE through the drafter protocol: greedy via the engine's speculative loop == plain greedy, the pack
round trip (config + tensors validated by the drafter, loaded back as the same drafter), bounded config."""
import pytest
import torch

from accel.runtime.decode import generate_plain
from accel.runtime.drafters import DRAFTERS, EagleDrafter
from accel.runtime.drafters.eagle import EagleConfig, EagleDraft
from accel.runtime.engine import Engine, Sampling
from accel.runtime.model import CompactLM
from accel.runtime.pack import Pack, load_pack, save_pack

from .eagle_tiny import make_draft, tiny_hf

@pytest.fixture(scope="module")
def model():
    return CompactLM.from_hf(tiny_hf())


def drafter(model, seed=1, std=0.3, **tree):
    return EagleDrafter(make_draft(model, seed, std), **tree)


PROMPTS = [[1, 5, 7, 9, 11, 13, 2, 4], [42, 3]]


def test_registered():
    assert DRAFTERS["eagle"] is EagleDrafter


@pytest.mark.parametrize("std", [0.3, 0.0])  # a random draft, and an all-zero (always wrong) one
def test_greedy_engine_equals_plain(model, std):
    eng = Engine(model, drafter(model, std=std, top_k=3, depth=3, num_nodes=8), mode=False)
    for p in PROMPTS:
        ref = generate_plain(model, [p], 24)[0].tokens
        got = eng.generate([p], Sampling(24))[0]
        assert got.tokens == ref
        assert sum(got.accept_lengths) >= len(ref)


def test_pack_round_trip(model, tmp_path):
    dr = drafter(model, top_k=4, depth=2, num_nodes=6)
    cfg, tensors = dr.to_pack()
    path = save_pack(Pack("tiny", "fp", patterns=None, drafter=cfg, tensors=tensors, drafter_kind="eagle"),
                     tmp_path / "p.safetensors")
    pack = load_pack(path)
    assert pack.drafter_kind == "eagle" and pack.drafter["tree"] == {"top_k": 4, "depth": 2, "num_nodes": 6}
    back = EagleDrafter.from_pack(pack, model)
    assert (back.top_k, back.depth, back.num_nodes) == (4, 2, 6)
    for k, v in tensors.items():
        assert torch.equal(back.draft.state_dict()[k], v)
    p = PROMPTS[0]
    assert Engine(model, back, mode=False).generate([p], Sampling(16))[0].tokens == \
        generate_plain(model, [p], 16)[0].tokens


def test_config_bounds(model):
    cfg, _ = drafter(model).to_pack()
    for bad in ({**cfg, "tree": {"top_k": 10 ** 9}}, {**cfg, "tree": {"depth": "5"}}, {**cfg, "hidden_size": 1 << 30},
                {**cfg, "tree": [1, 2]}, [1], {**cfg, "bogus": 1}):
        with pytest.raises(ValueError):
            EagleDrafter.validate_config(bad)


def test_pack_stores_bf16_and_smollm2_draft_fits_the_transfer_limit(tmp_path):
    """The pack keeps the draft in bf16 (fp32 master weights are halved): SmolLM2-135M's draft layer
    (H 576, MLP 1536, 9/3 heads of 64, 30 layers, vocab 49152) is ~10 MB, under the 20 MB pack budget
    and the 16 MiB a GPU run may bring back."""
    c = EagleConfig(hidden_size=576, vocab_size=49152, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    intermediate_size=1536, target_num_layers=30)
    emb = torch.zeros(49152, 576)
    d = EagleDraft(c, emb, emb).init_weights(0)  # fp32, as training leaves it
    cfg, tensors = EagleDrafter(d).to_pack()
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    path = save_pack(Pack("smollm2", "fp", drafter=cfg, tensors=tensors, drafter_kind="eagle"), tmp_path / "e.safetensors")
    size = path.stat().st_size
    assert size <= 16 * 2 ** 20 and size <= 20e6
    assert size >= 2 * sum(p.numel() for p in d.parameters())  # nothing dropped
