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
