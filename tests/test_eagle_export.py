"""EAGLE draft files: our drafter file round trip and its bounded loader; the EAGLE-3 export checked against
the names SGLang's and vLLM's loaders map (sgl-project/sglang python/sglang/srt/models/llama_eagle3.py,
vllm-project/vllm vllm/model_executor/models/llama_eagle3.py, ``load_weights`` of both)."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig

from accel.runtime.drafters.eagle import EagleConfig, EagleDraft
from accel.runtime.drafters.eagle_io import eagle3_tensor_names, export_eagle3, load_eagle, save_eagle
from accel.runtime.errors import PackError

H, V, L = 64, 97, 12

_STACKED = [(".qkv_proj", ".q_proj"), (".qkv_proj", ".k_proj"), (".qkv_proj", ".v_proj"),
            (".gate_up_proj", ".gate_proj"), (".gate_up_proj", ".up_proj")]


def _layer_params(prefix):
    return {f"{prefix}.{n}.weight" for n in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                             "mlp.down_proj", "input_layernorm", "hidden_norm",
                                             "post_attention_layernorm")}


# the parameters of each engine's EAGLE-3 module (embed_tokens omitted: optional, shared with the target)
SGLANG_PARAMS = _layer_params("model.midlayer") | {"model.fc.weight", "model.norm.weight", "lm_head.weight"}
VLLM_PARAMS = _layer_params("model.layers.0") | {"model.fc.weight", "model.norm.weight", "lm_head.weight",
                                                 "draft_id_to_target_id"}


def sglang_map(name):
    """LlamaForCausalLMEagle3.load_weights: d2t -> hot_token_id, t2d skipped, stacked q/k/v and gate/up,
    else the name itself if it is a parameter, otherwise under ``model.``."""
    if "d2t" in name or "t2d" in name:
        return None
    for param, shard in _STACKED:
        if shard in name:
            name = name.replace(shard, param)
            break
    return name if name in SGLANG_PARAMS else f"model.{name}"


def vllm_map(name):
    """Eagle3LlamaForCausalLM.load_weights + LlamaModel.load_weights: t2d skipped, d2t renamed, non-lm_head
    names under ``model.``, ``midlayer.`` -> ``layers.0.``, stacked q/k/v and gate/up."""
    if "t2d" in name:
        return None
    if "d2t" in name:
        return name.replace("d2t", "draft_id_to_target_id")
    if "lm_head" not in name:
        name = "model." + name
    name = name.replace("midlayer.", "layers.0.")
    for param, shard in _STACKED:
        if shard in name:
            return name.replace(shard, param)
    return name


def base_cfg():
    return LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=L,
                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)


def make(aux=None):
    torch.manual_seed(0)
    d = EagleDraft(EagleConfig.for_base(base_cfg(), aux_layers=aux)).init_weights(0, 0.1)
    d.attach_base(torch.randn(V, H), torch.randn(V, H))
    return d


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_export_names_match_sglang_and_vllm_loaders(tmp_path):
    d = make()
    out = export_eagle3(d, tmp_path / "e3", dtype=torch.float32, base_config=base_cfg())
    t = read(out / "model.safetensors")
    assert sorted(t) == sorted(eagle3_tensor_names())
    for mapper, params in ((sglang_map, SGLANG_PARAMS), (vllm_map, VLLM_PARAMS)):
        mapped = {mapper(k) for k in t} - {None}
        assert mapped == params, (mapper.__name__, mapped ^ params)
    # shapes the loaders' modules expect
    assert t["fc.weight"].shape == (H, 3 * H)
    assert t["midlayer.self_attn.q_proj.weight"].shape == (4 * 16, 2 * H)  # attention reads cat[emb, h]
    assert t["midlayer.self_attn.k_proj.weight"].shape == (2 * 16, 2 * H)
    assert t["lm_head.weight"].shape == (V, H) and torch.equal(t["lm_head.weight"], d.lm_head_weight)
    assert t["d2t"].dtype == torch.int64 and t["d2t"].shape == (V,) and not t["d2t"].any()  # identity map
    assert t["t2d"].dtype == torch.bool and t["t2d"].shape == (V,) and t["t2d"].all()
    sd = d.state_dict()
    assert all(torch.equal(t[k], sd[k]) for k in sd)  # our names are EAGLE-3's
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] == cfg["vocab_size"] == V and cfg["target_hidden_size"] == H
    assert cfg["tie_word_embeddings"] is False and cfg["eagle_config"]["use_aux_hidden_state"] is True
    assert cfg["head_dim"] == 16 and cfg["norm_before_residual"] is False
    # default layers (2, L//2, L-3): both engines' own defaults, so no ids are written
    assert d.config.feature_layers == (2, 6, 9) and "eagle_aux_hidden_state_layer_ids" not in cfg
    assert "eagle_aux_hidden_state_layer_ids" not in cfg["eagle_config"]
    assert export_eagle3(d, tmp_path / "bf", base_config=base_cfg()) and \
        read(tmp_path / "bf" / "model.safetensors")["fc.weight"].dtype == torch.bfloat16


def test_export_custom_layers_in_each_engines_convention(tmp_path):
    out = export_eagle3(make(aux=(1, 5, 10)), tmp_path / "e3")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 5, 10]  # vLLM: captured before layer i
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 4, 9]  # SGLang adds 1
    with pytest.raises(PackError, match="embedding"):
        export_eagle3(make(aux=(0, 5, 10)), tmp_path / "e0")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PackError, match="not a folder"):
        export_eagle3(make(), tmp_path / "file")


def test_save_load_round_trip_and_bounded_loader(tmp_path):
    d = make(aux=(1, 5, 10))
    p = save_eagle(tmp_path / "d.safetensors", d, fingerprint="abc", base_model="tiny", provenance={"x": 1})
    got, meta = load_eagle(p)
    assert got.config == d.config and meta["fingerprint"] == "abc" and meta["provenance"] == {"x": 1}
    assert meta["drafter.kind"] == "eagle"
    a, b = d.state_dict(), got.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import save_file
    sd = {k: v.clone() for k, v in a.items()}
    good_meta = {"accel.drafter.kind": "eagle", "accel.drafter.config": json.dumps(d.config.to_dict())}
    cases = [
        ({**sd, "fc.weight": torch.zeros(3, 3)}, good_meta, "shape"),
        ({k: v for k, v in sd.items() if k != "norm.weight"}, good_meta, "missing"),
        (sd, {**good_meta, "accel.drafter.kind": "medusa"}, "no EAGLE draft"),
        (sd, {**good_meta, "accel.drafter.config": "{"}, "bad EAGLE draft config"),
        (sd, {**good_meta, "accel.drafter.config": json.dumps({**d.config.to_dict(), "hidden_size": -1})}, "outside"),
    ]
    for i, (tensors, meta, needle) in enumerate(cases):
        f = tmp_path / f"bad{i}.safetensors"
        save_file(tensors, str(f), metadata=meta)
        with pytest.raises(PackError, match=needle) as e:
            load_eagle(f)
        assert "\n" not in str(e.value)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(PackError, match="not a readable"):
        load_eagle(tmp_path / "junk.safetensors")
    with pytest.raises(PackError, match="not found"):
        load_eagle(tmp_path / "none.safetensors")
