"""scripts/gpu/qwen_longctx.py (issue 15's one-call GPU script): the measured break-even goes into the
pack where `runtime.prefill.sparse_threshold` reads it, and the summary table reads partial results."""
import importlib.util
import json
from pathlib import Path

import torch

from accel.runtime.pack import Pack, load_pack, save_pack
from accel.runtime.prefill import sparse_threshold

_spec = importlib.util.spec_from_file_location("qwen_longctx", Path(__file__).parents[1] / "scripts/gpu/qwen_longctx.py")
qwen_longctx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qwen_longctx)


def _rows(*speedups, lengths=(4096, 8192, 16384, 31744)):
    return [{"length": n, "dense_ms": 10.0, "sparse_ms": 10.0 / s, "speedup": s, "predicted_work": 0.2}
            for n, s in zip(lengths, speedups)]


def test_break_even():
    assert qwen_longctx.break_even(_rows(0.5, 0.9, 1.2, 1.6), 32768) == 16384
    assert qwen_longctx.break_even(_rows(1.1, 0.9, 1.2, 1.6), 32768) == 16384  # must win from there on
    assert qwen_longctx.break_even(_rows(1.1, 1.2, 1.3, 1.6), 32768) == 4096
    assert qwen_longctx.break_even(_rows(0.5, 0.6, 0.7, 0.9), 32768) == 32769  # never: above the context
    assert qwen_longctx.break_even(_rows(0.5, 0.6, 1.7, 0.9), 32768) == 32769


def test_threshold_recorded_in_the_pack_and_read_by_the_runtime(tmp_path):
    p = tmp_path / "p.safetensors"
    save_pack(Pack("tiny", "fp", patterns=[{"0": ["vertical_and_slash", 64, 64, 0.9]}],
                   patterns_info={"seq_len": 16384}), p)
    (tmp_path / "speed.json").write_text(json.dumps({"rows": _rows(0.5, 0.9, 1.2, 1.6)}))
    assert qwen_longctx.record_threshold(str(p), str(tmp_path / "speed.json"), 32768) == 16384
    pk = load_pack(p)
    assert pk.patterns_info["seq_len"] == 16384 and pk.patterns_info["sparse_min_len"] == 16384
    assert [r["length"] for r in pk.patterns_info["sparse_min_len_measured"]] == [4096, 8192, 16384, 31744]
    assert pk.layer_patterns(0)[0].name == "vertical_and_slash"
    if torch.cuda.is_available():
        assert sparse_threshold(pk, "cuda") == 16384
    assert sparse_threshold(pk, "cpu") is None  # CPU: off unless asked for


def test_table_reads_partial_results(tmp_path):
    assert qwen_longctx.table(str(tmp_path)) == ""
    (tmp_path / "timings.json").write_text(json.dumps({"search": 130, "speed": 70}))
    (tmp_path / "speed.json").write_text(json.dumps({"rows": _rows(0.8, 1.6)}))
    row = {"task": "niah_single_1", "length": 4096, "samples": 16, "dense": 100.0, "sparse": 93.75, "density": 0.2}
    (tmp_path / "ruler.json").write_text(json.dumps({"partial": True, "rows": [row], "averages": [
        {"length": 4096, "dense": 90.0, "sparse": 80.0, "needle_dense": None, "needle_sparse": None,
         "worst_task_delta": -10.0}], "perplexity": [
        {"text": "book", "length": 8192, "dense": 10.0, "sparse": 10.5, "ratio": 1.05},
        {"length": 8192, "dense": 8.0, "sparse": 8.0, "ratio": 1.0}]}))  # a row from before --ppl-text: docs
    t = qwen_longctx.table(str(tmp_path))
    assert "average 4096: dense 90.0 sparse 80.0; worst task delta -10.0" in t
    assert "perplexity book 8192: dense 10.000 sparse 10.500 (+5.00 %)" in t
    assert "perplexity docs 8192: dense 8.000 sparse 8.000 (+0.00 %)" in t
    assert "search 130" in t and "1.60x" in t and "[partial]" in t and "100.0/ 93.8 (16)" in t
