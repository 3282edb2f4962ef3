"""The acceleration pack: round trip, merge-friendly structure, and every validation failure."""

import json
import os

import pytest
import torch

from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.errors import PackError
from accel.runtime.pack import Pack, export_minference, load_pack, save_pack, validate_for_model
from .conftest import make_tiny_llama


def _heads_pack(fp="abc123", projection="own", H=64, V=300, K=2, layers=1):
    cfg = MedusaConfig(num_heads=K, num_layers=layers, hidden_size=H, vocab_size=V, projection=projection)
    heads = MedusaHeads(cfg, torch.randn(V, H))
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_()
    patterns = [{"0": ["vertical_and_slash", 1000, 6096, 0.97], "1": ["stream_llm", 64, 512, 0.9],
                 "2": ["block_sparse", 16, 0, 0.8], "3": ["dense", 0, 0, 1.0]} for _ in range(2)]
    return Pack(base_model="tiny", fingerprint=fp, patterns=patterns, patterns_info={"seq_len": 4096},
                medusa={**cfg.to_dict(), "tree": [[0], [0, 0], [1]]}, heads=heads.state_dict(),
                provenance={"command": "accel test"}), heads


def test_round_trip(tmp_path):
    pack, heads = _heads_pack()
    path = save_pack(pack, tmp_path / "p.safetensors")
    back = load_pack(path)
    assert back.fingerprint == pack.fingerprint and back.base_model == "tiny"
    assert back.patterns == pack.patterns and back.patterns_info == {"seq_len": 4096}
    assert back.medusa == pack.medusa and back.provenance == pack.provenance
    assert set(back.heads) == set(heads.state_dict())
    for k, v in heads.state_dict().items():
        assert torch.equal(back.heads[k], v)
    assert back.layer_patterns(0)[0].name == "vertical_and_slash"
    # vLLM's Medusa loader names
    assert "blocks.1.layers.0.weight" in back.heads and "lm_heads.1.weight" in back.heads


def test_patterns_only_and_heads_only(tmp_path):
    pack, _ = _heads_pack()
    only_p = Pack("tiny", "fp", patterns=pack.patterns)
    only_h = Pack("tiny", "fp", medusa=pack.medusa, heads=pack.heads)
    assert load_pack(save_pack(only_p, tmp_path / "a.safetensors")).has_heads is False
    b = load_pack(save_pack(only_h, tmp_path / "b.safetensors"))
    assert b.has_heads and b.patterns is None


def test_shared_projection_stores_no_vocab_matrix(tmp_path):
    pack, _ = _heads_pack(projection="shared")
    back = load_pack(save_pack(pack, tmp_path / "s.safetensors"))
    assert not any(k.startswith("lm_heads.") for k in back.heads)


def test_atomic_write_keeps_old_pack_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "p.safetensors"
    pack, _ = _heads_pack()
    save_pack(pack, path)
    before = path.read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_pack(pack, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temp file left behind


@pytest.mark.parametrize("corrupt", ["truncate", "garbage", "empty"])
def test_corrupted_files(tmp_path, corrupt):
    path = tmp_path / "p.safetensors"
    save_pack(_heads_pack()[0], path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(300), "empty": b""}[corrupt])
    with pytest.raises(PackError, match="not a readable safetensors pack"):
        load_pack(path)


def test_missing_file(tmp_path):
    with pytest.raises(PackError, match="not found"):
        load_pack(tmp_path / "nope.safetensors")


def _rewrite(path, meta_update=None, drop=None, tensors_update=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_update or {})
    for k in drop or []:
        t.pop(k)
    t.update(tensors_update or {})
    save_file(t, str(path), metadata=meta)


def test_unknown_version_and_not_a_pack(tmp_path):
    path = tmp_path / "p.safetensors"
    save_pack(_heads_pack()[0], path)
    _rewrite(path, {"accel.format_version": "99"})
    with pytest.raises(PackError, match="format version '99'"):
        load_pack(path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PackError, match="not an accel pack"):
        load_pack(tmp_path / "other.safetensors")


def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    path = tmp_path / "p.safetensors"
    save_pack(_heads_pack()[0], path)
    _rewrite(path, drop=["blocks.0.layers.0.bias"])
    with pytest.raises(PackError, match="missing head tensors"):
        load_pack(path)
    save_pack(_heads_pack()[0], path)
    _rewrite(path, tensors_update={"blocks.9.layers.0.weight": torch.zeros(64, 64)})
    with pytest.raises(PackError, match="unexpected tensors"):
        load_pack(path)
    save_pack(_heads_pack()[0], path)
    _rewrite(path, tensors_update={"blocks.0.layers.0.weight": torch.zeros(64, 63)})
    with pytest.raises(PackError, match="shape"):
        load_pack(path)


def test_bad_pattern_metadata(tmp_path):
    path = tmp_path / "p.safetensors"
    save_pack(_heads_pack()[0], path)
    _rewrite(path, {"accel.patterns": json.dumps([{"0": ["diagonal_magic", 1, 2, 0.5]}])})
    with pytest.raises(PackError, match="bad pattern entry"):
        load_pack(path)
    _rewrite(path, {"accel.patterns": "{not json"})
    with pytest.raises(PackError, match="not valid JSON"):
        load_pack(path)


def test_validate_for_model_fingerprint_and_shapes():
    model = make_tiny_llama()
    pack, _ = _heads_pack(fp="aaaa", H=64, V=300)
    validate_for_model(pack, model, "aaaa")
    with pytest.raises(PackError, match="--force"):
        validate_for_model(pack, model, "bbbb")
    with pytest.warns(UserWarning, match="--force"):
        validate_for_model(pack, model, "bbbb", force=True)
    wrong_vocab, _ = _heads_pack(fp="aaaa", H=64, V=301)
    with pytest.raises(PackError, match="vocab"):
        validate_for_model(wrong_vocab, model, "aaaa", force=True)
    wrong_layers = Pack("tiny", "aaaa", patterns=pack.patterns * 2)
    with pytest.raises(PackError, match="layers"):
        validate_for_model(wrong_layers, model, "aaaa")


def test_export_minference(tmp_path):
    pack, _ = _heads_pack()
    out = export_minference(pack, tmp_path / "cfg.json")
    cfg = json.loads(out.read_text())
    assert len(cfg) == 2 and cfg[0]["0"] == ["vertical_and_slash", 1000, 6096, 0.97]
    with pytest.raises(PackError, match="search-patterns"):
        export_minference(Pack("x", "fp"), tmp_path / "none.json")
