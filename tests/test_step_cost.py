"""The 8B-shape step-cost projection (bench/step_cost.py, scripts/step_cost_projection.py): its
structure and arithmetic on a tiny random shape on the CPU (the timings themselves mean nothing here)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from accel.bench.step_cost import projection, run_step_cost, summary_lines


def test_projection_arithmetic():
    p = projection(1.6, accepts=(2, 4), target=2.5)
    assert p["speedup_at"] == {"2": pytest.approx(1.25), "4": pytest.approx(2.5)}
    assert p["accept_for_target"] == pytest.approx(4.0) and p["step_over_plain"] == 1.6


def test_run_step_cost_structure_on_a_tiny_shape():
    res = run_step_cost("tiny-llama", device="cpu", dtype="fp32", context=16, medusa_heads=2, medusa_nodes=6,
                        eagle=((3, 2, 5),), accepts=(2, 3, 4, 5), reps=1, warmup=1, log=lambda m: None)
    assert res["mode"] == "eager" and res["context"] == 16 and res["plain_step_ms"] > 0
    m = res["medusa"]
    assert m["tree_tokens"] == 7 and m["verify_ms"] > 0 and m["step_ms"] > 0
    assert m["step_over_plain"] == pytest.approx(m["step_ms"] / res["plain_step_ms"])
    assert set(m["speedup_at"]) == {"2", "3", "4", "5"}
    [e] = res["eagle"]
    assert (e["top_k"], e["depth"], e["nodes"], e["tree_tokens"]) == (3, 2, 5, 6) and e["tree_depth"] <= 2
    assert e["draft_ms"] == pytest.approx(e["draft_first_ms"] + (2 - 1) * e["draft_step_ms"])
    assert e["step_ms"] == pytest.approx(e["verify_ms"] + e["draft_ms"])
    assert e["accept_for_target"] == pytest.approx(2.5 * e["step_ms"] / res["plain_step_ms"])
    lines = summary_lines(res)
    assert "accept for 2.5x" in lines[1] and lines[2].startswith("medusa N+1=7") and lines[3].startswith("eagle k=3 d=2 N=5")
    json.dumps(res)  # JSON-ready
    assert all(math.isfinite(v) for v in m["speedup_at"].values())


def test_script_writes_json(tmp_path):
    out = tmp_path / "sc.json"
    root = Path(__file__).resolve().parents[1]  # another test may have changed the working folder
    r = subprocess.run([sys.executable, str(root / "scripts" / "step_cost_projection.py"), "--synthetic", "tiny-llama", "--device", "cpu",
                        "--context", "8", "--medusa-heads", "2", "--medusa-nodes", "4", "--eagle", "2,2,3",
                        "--reps", "1", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=root)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["bench"] == "step_cost" and "command" in d["env"] and len(d["eagle"]) == 1
    assert "eagle k=2 d=2 N=3" in r.stdout
