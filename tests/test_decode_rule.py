"""Batched plain vs speculative per prompt file (runtime.decode_rule): the rule picks each side on
constructed tables, ``--stats`` names the path and why, and greedy output is the same either way."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accel.cli import app
from accel.runtime.decode_rule import (DEFAULT_THROUGHPUT, DecodeChoice, DecodeThroughput, choose_decode,
                                       throughput_for)
from accel.runtime.models import load_model
from accel.runtime.pack import Pack, load_pack, save_pack

runner = CliRunner()


def test_plain_throughput_interpolates_and_stays_flat_past_the_table():
    t = DecodeThroughput({1: 100.0, 8: 800.0}, 150.0, "test")
    assert t.plain_at(1) == 100.0 and t.plain_at(8) == 800.0
    assert t.plain_at(4) == pytest.approx(400.0)
    assert t.plain_at(64) == 800.0  # no extrapolated growth
    assert DecodeThroughput({2: 200.0}, 1.0, "t").plain_at(1) == pytest.approx(100.0)


def test_rule_picks_each_side():
    t = DecodeThroughput({1: 100.0, 8: 800.0}, 150.0, "constructed")
    one = choose_decode(1, 256, t, drafter="medusa")
    assert one.speculative  # 256/150 s < 256/100 s
    assert one.est_speculative_s == pytest.approx(256 / 150) and one.est_batched_s == pytest.approx(2.56)
    many = choose_decode(8, 256, t)
    assert not many.speculative  # 8*256/800 = 2.56 s < 8*256/150 = 13.7 s
    assert many.est_batched_s == pytest.approx(2.56) and many.est_speculative_s == pytest.approx(8 * 256 / 150)
    # a speculative decoder faster than any batch wins at every size
    assert choose_decode(8, 256, DecodeThroughput({1: 100.0, 8: 800.0}, 2000.0, "x")).speculative
    # forcing overrides the estimate, and the line says so
    forced = choose_decode(8, 256, t, force=True, forced_by="--medusa", drafter="medusa")
    assert forced.speculative and "forced by --medusa" in forced.line()
    assert many.line() == ("decode: batched plain (8 prompts: est. 2.6 s vs speculative 14 s; "
                           "rule from constructed)")
    assert one.line().startswith("decode: speculative (medusa) prompt by prompt (1 prompt: est. 1.7 s vs batched")
    assert DecodeChoice(False, 3, forced="--no-medusa").line() == "decode: batched plain (3 prompts: --no-medusa)"


def test_default_table_is_the_measured_h200_run():
    """The defaults are results/decode-smollm2-wall.json's figures, labelled as defaults."""
    d = json.load(open(Path(__file__).parents[1] / "results" / "decode-smollm2-wall.json"))
    plain = next(r for r in d["rows"] if r["engine"].startswith("plain"))
    med = next(r for r in d["rows"] if r["engine"].startswith("medusa"))
    t = DEFAULT_THROUGHPUT
    assert t.plain[1] == pytest.approx(plain["wall_tokens_per_s"], rel=1e-3)
    for b, tps in d["decode_throughput"]["plain_tok_s"].items():  # wall clock by batch size
        assert t.plain[int(b)] == pytest.approx(tps, rel=1e-3)
    assert t.plain[d["prompts"]] == pytest.approx(plain["batched_wall_tokens_per_s"][str(d["prompts"])], rel=1e-3)
    assert t.speculative == pytest.approx(med["wall_tokens_per_s"], rel=1e-3)
    assert t.source.startswith("defaults:") and "decode-smollm2-wall.json" in t.source


def test_table_from_pack_provenance_else_defaults():
    table = {"plain_tok_s": {"1": 10.0, "4": 30.0}, "speculative_tok_s": 12.0, "device_type": "cpu", "device": "cpu"}
    pk = Pack("m", "fp", provenance={"decode_throughput": table})
    t = throughput_for(pk, "cpu")
    assert t.plain == {1: 10.0, 4: 30.0} and t.speculative == 12.0 and "pack" in t.source
    assert throughput_for(pk, "cuda") is DEFAULT_THROUGHPUT  # measured on another kind of device
    assert throughput_for(None, "cpu") is None and throughput_for(None, "cuda") is DEFAULT_THROUGHPUT
    for bad in ({"plain_tok_s": {"0": 1.0}, "speculative_tok_s": 1.0}, {"plain_tok_s": "x"},
                {"plain_tok_s": {"1": float("nan")}, "speculative_tok_s": 1.0}, [1, 2]):
        assert throughput_for(Pack("m", "fp", provenance={"decode_throughput": bad}), "cuda") is DEFAULT_THROUGHPUT
        with pytest.raises(ValueError):
            DecodeThroughput.from_dict(bad, "x")
    assert DecodeThroughput.from_dict(t.to_dict(), "again").plain == t.plain


def _pack_with_table(tiny_model_dir, path, spec_tok_s):
    from .test_generate import _random_heads_pack

    lm = load_model(str(tiny_model_dir), device="cpu")
    p = load_pack(_random_heads_pack(lm, path))
    p.provenance["decode_throughput"] = {"plain_tok_s": {"1": 100.0, "4": 400.0}, "speculative_tok_s": spec_tok_s,
                                         "device_type": "cpu", "device": "constructed"}
    return save_pack(p, path)


def test_stats_names_the_path_and_greedy_output_is_the_same_either_way(tiny_model_dir, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in enumerate(["hello", "abc", "a longer one"])))
    common = ["generate", "--prompt-file", f, "--model", tiny_model_dir, "-n", 12, "--stats"]
    slow_spec = _pack_with_table(tiny_model_dir, tmp_path / "slow.safetensors", 50.0)
    fast_spec = _pack_with_table(tiny_model_dir, tmp_path / "fast.safetensors", 5000.0)
    runs = {}
    for name, extra in (("batched", ["--pack", slow_spec]), ("spec", ["--pack", fast_spec]),
                        ("forced_spec", ["--pack", slow_spec, "--medusa"]),
                        ("forced_plain", ["--pack", fast_spec, "--no-medusa"])):
        out = tmp_path / f"{name}.jsonl"
        r = runner.invoke(app, list(map(str, [*common, *extra, "-o", out])))
        assert r.exit_code == 0, r.output
        line = next(l for l in r.output.splitlines() if l.startswith("decode: "))
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        runs[name] = (line, [x["text"] for x in rows], {x["stats"]["engine"] for x in rows})
    assert re.match(r"decode: batched plain \(3 prompts: est\. [\d.]+ s vs speculative [\d.]+ s; rule from "
                    r"the pack's measurement \(constructed\)\)$", runs["batched"][0]), runs["batched"][0]
    assert runs["batched"][2] == {"compact"}
    assert runs["spec"][0].startswith("decode: speculative (medusa) prompt by prompt (3 prompts: est.")
    assert runs["spec"][2] == {"compact+medusa"}
    assert "forced by --medusa" in runs["forced_spec"][0] and runs["forced_spec"][2] == {"compact+medusa"}
    assert runs["forced_plain"][0] == "decode: batched plain (3 prompts: --no-medusa)"
    texts = [v[1] for v in runs.values()]
    assert all(t == texts[0] for t in texts)


def test_cpu_without_a_measurement_runs_plain_and_says_why(tiny_model_dir, tmp_path):
    from .test_generate import _random_heads_pack

    lm = load_model(str(tiny_model_dir), device="cpu")
    pack = _random_heads_pack(lm, tmp_path / "p.safetensors")
    f = tmp_path / "p.txt"
    f.write_text("hello")
    r = runner.invoke(app, list(map(str, ["generate", "-p", f, "-m", tiny_model_dir, "-n", 4, "--pack", pack,
                                          "--stats"])))
    assert r.exit_code == 0, r.output
    assert "decode: batched plain (1 prompt: no throughput measured on this device" in r.output


def test_bench_decode_wall_clock_speedups_and_the_table_into_a_pack(tiny_model_dir, tmp_path):
    """`accel bench decode` reports wall-clock tok/s beside decode-only, computes speed-ups from wall
    clock, measures batched plain by batch size, and --into-pack stores the table the rule reads."""
    from .test_generate import _random_heads_pack

    lm = load_model(str(tiny_model_dir), device="cpu")
    pack = _random_heads_pack(lm, tmp_path / "p.safetensors")
    out = tmp_path / "d.json"
    r = runner.invoke(app, list(map(str, ["bench", "decode", "--model", tiny_model_dir, "--device", "cpu",
                                          "--max-new-tokens", 6, "--prompts", 3, "--no-hf", "--pack", pack,
                                          "--json", out, "--into-pack", pack])))
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    plain = next(x for x in d["rows"] if x["engine"].startswith("plain"))
    med = next(x for x in d["rows"] if x["engine"].startswith("medusa"))
    assert 0 < plain["wall_tokens_per_s"] <= plain["tokens_per_s"]
    assert med["speedup_vs_plain"] == pytest.approx(med["wall_tokens_per_s"] / plain["wall_tokens_per_s"])
    assert med["decode_speedup_vs_plain"] == pytest.approx(med["tokens_per_s"] / plain["tokens_per_s"])
    t = d["decode_throughput"]
    assert set(t["plain_tok_s"]) == {"1", "2", "3"} and t["device_type"] == "cpu"
    assert t["plain_tok_s"]["1"] == pytest.approx(plain["wall_tokens_per_s"])
    assert t["speculative_tok_s"] == pytest.approx(med["wall_tokens_per_s"])
    stored = throughput_for(load_pack(pack), "cpu")
    assert stored is not None and stored.speculative == pytest.approx(t["speculative_tok_s"])
    assert "pack" in stored.source
    # random heads (no --pack): the table says nothing about a pack's drafter, so it is refused
    r = runner.invoke(app, list(map(str, ["bench", "decode", "--model", tiny_model_dir, "--device", "cpu",
                                          "--max-new-tokens", 2, "--prompts", 1, "--no-hf", "--into-pack", pack])))
    assert r.exit_code != 0 and "random heads" in r.output
