"""The EAGLE acceptance benchmark runs end to end on the tiny model (CPU) and checks exactness."""

import torch

from accel.bench.eagle import run_eagle_bench
from accel.runtime.drafters.eagle import EagleConfig, EagleDraft
from accel.runtime.drafters.eagle_io import save_eagle
from accel.runtime.models import load_model


def test_eagle_bench_smoke(tiny_model_dir, tmp_path):
    lm = load_model(str(tiny_model_dir), device="cpu")
    d = EagleDraft(EagleConfig.for_base(lm.model.config)).init_weights(0, 0.1)
    p = save_eagle(tmp_path / "d.safetensors", d, fingerprint=lm.fingerprint)
    out = run_eagle_bench(str(tiny_model_dir), str(p), 2, 12, [(4, 3, 10)], device="cpu", step_cost=1.2,
                          log=lambda *a: None)
    row = out["trees"][0]
    assert row["identical"] == "2/2" and row["mean_accept"] >= 1.0 and "projected_speedup" in row


def test_eagle_bench_from_a_pack_compares_plain_and_eagle(tiny_model_dir, tmp_path, capsys):
    """The one-command GPU check, on the CPU: an EAGLE pack, two trees, rows with decode and wall-clock
    speed, tokens/step, identical counts; JSON written, table printed."""
    import json

    from accel.bench.eagle import main
    from accel.runtime.drafters import EagleDrafter
    from accel.runtime.model import CompactLM
    from accel.runtime.pack import Pack, save_pack

    lm = load_model(str(tiny_model_dir), device="cpu")
    cm = CompactLM.from_hf(lm.model)
    d = EagleDraft(EagleConfig.for_base(lm.model.config), cm.tok_embeddings, cm.output.weight).init_weights(0, 0.1)
    cfg, tensors = EagleDrafter(d, top_k=3, depth=3, num_nodes=8).to_pack()
    pack = save_pack(Pack(lm.name, lm.fingerprint, drafter=cfg, tensors=tensors, drafter_kind="eagle"),
                     tmp_path / "e.safetensors")
    from accel.bench.decode import random_heads
    from accel.runtime.drafters.medusa import MedusaDrafter

    mcfg, mt = MedusaDrafter(random_heads(cm, 2), [(0,), (1,), (0, 0)]).to_pack()
    medusa = save_pack(Pack(lm.name, lm.fingerprint, drafter=mcfg, tensors=mt, drafter_kind="medusa"),
                       tmp_path / "m.safetensors")
    js = tmp_path / "out.json"
    main(["--model", str(tiny_model_dir), "--pack", str(pack), "--prompts", "2", "--max-new-tokens", "10",
          "--tree", "3,3,8", "--tree", "2,2,4", "--device", "cpu", "--medusa-pack", str(medusa), "--json", str(js)])
    out = json.loads(js.read_text())
    assert [r["engine"].split()[0] for r in out["rows"]] == ["plain", "medusa", "eagle", "eagle"]
    assert out["rows"][1]["identical"] == "2/2" and out["errors"] == []
    for r in out["trees"]:
        assert r["identical"] == "2/2" and r["mean_accept"] >= 1.0 and r["wall_tokens_per_s"] > 0
        assert r["tokens_per_s"] > 0 and "wall_speedup_vs_plain" in r and "step_cost" in r
    assert "wall tok/s" in capsys.readouterr().out
