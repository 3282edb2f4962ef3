"""`accel bench` subcommands at CPU sizes: they run, print a table, and write the JSON schema."""

import json

import pytest
from typer.testing import CliRunner

from accel.cli import app

runner = CliRunner()


def _run(*args):
    r = runner.invoke(app, list(map(str, args)))
    assert r.exit_code == 0, r.output
    return r


def _env_ok(d):
    assert {"date", "command", "torch", "transformers", "device"} <= set(d["env"])
    assert d["env"]["command"].startswith("accel bench")


def test_bench_prefill_synthetic(tmp_path):
    out = tmp_path / "p.json"
    _run("bench", "prefill", "--synthetic", "smollm2-135m", "--layers", 1, "--lengths", "128,256", "--device", "cpu",
         "--rep", 1, "--pattern", "stream_llm:16:64", "--json", out, "--plot", tmp_path / "plots")
    d = json.loads(out.read_text())
    _env_ok(d)
    assert [r["length"] for r in d["rows"]] == [128, 256]
    for r in d["rows"]:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0 and 0 < r["predicted_work"] <= 1
        assert 0 < r["index_density_random_qk"] <= 1
    assert (tmp_path / "plots" / "prefill-latency.png").stat().st_size > 1000


def test_bench_decode_tiny(tiny_model_dir, tmp_path):
    out = tmp_path / "d.json"
    _run("bench", "decode", "--model", tiny_model_dir, "--device", "cpu", "--max-new-tokens", 8, "--prompts", 2,
         "--json", out)
    d = json.loads(out.read_text())
    _env_ok(d)
    engines = [r["engine"] for r in d["rows"]]
    assert engines[0].startswith("transformers") and any(e.startswith("plain") for e in engines)
    assert any(e.startswith("medusa") for e in engines) and d["heads"].startswith("random")
    assert all(r["tokens_per_s"] > 0 for r in d["rows"])


def test_bench_quality_tiny(tiny_model_dir, tmp_path):
    out = tmp_path / "q.json"
    _run("bench", "quality", "--model", tiny_model_dir, "--device", "cpu", "--lengths", "128,256", "--depths", "0,1",
         "--trials", 1, "--ppl-length", 256, "--pattern", "stream_llm:16:64", "--json", out, "--plot", tmp_path / "img")
    d = json.loads(out.read_text())
    _env_ok(d)
    assert len(d["needle"]["dense"]) == 2 and len(d["needle"]["dense"][0]) == 2
    assert all(0 <= x <= 1 for row in d["needle"]["sparse"] for x in row)
    assert d["perplexity"]["dense"] > 1 and d["perplexity"]["sparse"] > 1
    assert (tmp_path / "img" / "needle-sparse.png").exists()


def test_bench_bad_input(tmp_path):
    for args, needle in ((["prefill", "--synthetic", "gpt-9"], "unknown synthetic model"),
                         (["prefill", "--synthetic", "smollm2-135m", "--lengths", "abc", "--device", "cpu"], "bad length"),
                         (["quality", "--depths", "2"], "--depths")):
        r = runner.invoke(app, ["bench", *args])
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert needle in r.output.strip().splitlines()[-1], r.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CPU-only behaviour")
def test_bench_kernels_needs_gpu():
    r = runner.invoke(app, ["bench", "kernels"])
    assert r.exit_code != 0 and "needs a CUDA GPU" in r.output
