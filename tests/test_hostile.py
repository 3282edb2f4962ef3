"""Issue 13, case by case: hostile input and failing disks -- nothing lost, nothing hung, one clear line.

Each test is named for the issue's numbered case it pins (case1_..., case8_...).
"""

import json
import os
import stat
import time

import pytest
import torch
from typer.testing import CliRunner

from accel.cli import app
from accel.runtime import files
from accel.runtime.errors import PackError, PromptError
from accel.runtime.pack import load_pack
from accel.runtime.prompts import Prompt, encode_prompt, max_prompt_bytes, read_prompt_file
from .conftest import make_tokenizer
from .hostile_inputs import one_line_error, read_raw, valid_pack, write_raw

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(map(str, args)))


@pytest.fixture
def prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "abc"}\n')
    return f


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the (slow) model load is reached: checks must come first."""
    from accel.runtime import generate as g

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(g.Generator, "load", classmethod(boom))


# -- 1. markup in messages ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["[/]x.txt", "[bold]x.txt", "[link=e.vil]x[/link].txt", ":smile:.txt"])
def test_case1_file_names_print_as_written(tmp_path, name, no_model_load):
    line = one_line_error(_run("generate", "-p", name), "prompt file not found")
    assert line.endswith(name)


def test_case1_pack_inspect_escapes_what_the_pack_holds(tmp_path):
    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    meta["accel.base_model"] = "evil\x1b]0;pwned\x07\x1b[2J[link=http://e.vil]click[/link]\u202e"
    prov = json.loads(meta["accel.provenance"])
    prov["commands"]["x\x1b[31m"] = "[bold]not bold\u2028second line"
    meta["accel.provenance"] = json.dumps(prov)
    write_raw(path, meta, tensors)
    r = _run("pack", "inspect", path)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output and "\u2028" not in r.output
    assert "\\x1b" in r.output and "[link=http://e.vil]" in r.output and "[bold]not bold" in r.output


# -- 2. a pack can hang the tool ------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("num_heads", 1_000_000_000), ("num_layers", 10**6), ("hidden_size", 2**40),
                                         ("vocab_size", -1), ("num_heads", 2.0), ("num_heads", True),
                                         ("num_heads", "4"), ("num_heads", 0)])
def test_case2_medusa_sizes_bounded_before_use(tmp_path, field, value):
    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    medusa = json.loads(meta["accel.drafter"])
    medusa[field] = value
    meta["accel.drafter"] = json.dumps(medusa)
    write_raw(path, meta, tensors)
    t0 = time.perf_counter()
    with pytest.raises(PackError, match=f"accel.drafter.{field}"):
        load_pack(path)
    assert time.perf_counter() - t0 < 2
    one_line_error(_run("pack", "inspect", path), f"accel.drafter.{field}")


def test_case2_tree_bounded(tmp_path):
    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    for tree, needle in [([[0]] * 2000, "at most 1024"), ([[0, 0, 0]], "deep"), ([[0.5]], "integers"),
                         ([[5000]], "integers"), ([[0], [1, 1]], "prefix-closed"), ("x", "list")]:
        medusa = json.loads(meta["accel.drafter"])
        medusa["tree"] = tree
        write_raw(path, {**meta, "accel.drafter": json.dumps(medusa)}, tensors)
        with pytest.raises(PackError, match=needle):
            load_pack(path)


# -- 3. data loss on output -----------------------------------------------------------------------

def test_case3_generate_refuses_output_equal_to_input(prompts, no_model_load, monkeypatch):
    before = prompts.read_bytes()
    one_line_error(_run("generate", "-p", prompts, "-o", prompts), "is the input file")
    alias = prompts.parent / "alias.jsonl"
    alias.symlink_to(prompts)
    one_line_error(_run("generate", "-p", prompts, "-o", alias), "is the input file")
    monkeypatch.chdir(prompts.parent)  # undone after the test: later tests read repo files by relative path
    one_line_error(_run("generate", "-p", "p.jsonl", "-o", "./p.jsonl"), "is the input file")
    assert prompts.read_bytes() == before


def test_case3_export_refuses_to_overwrite_the_pack(tmp_path):
    pack = valid_pack(tmp_path / "p.safetensors")
    before = pack.read_bytes()
    one_line_error(_run("pack", "export", pack, "-o", pack), "is the input file")
    assert pack.read_bytes() == before


def test_case3_special_files_refused_and_symlinks_written_through(tmp_path, prompts, no_model_load):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(_run("generate", "-p", prompts, "-o", fifo), "FIFO")
    one_line_error(_run("generate", "-p", prompts, "-o", "/dev/null"), "character device")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    pack = valid_pack(tmp_path / "p.safetensors")
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = _run("pack", "export", pack, "-o", link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and json.loads(target.read_text())[0]["0"][0] == "vertical_and_slash"


# -- 4. write failures found late -----------------------------------------------------------------

def test_case4_unwritable_output_fails_before_the_model_loads(tmp_path, prompts, monkeypatch, no_model_load):
    import errno

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", ro)
    one_line_error(_run("generate", "-p", prompts, "-o", tmp_path / "o.jsonl"), "read-only file system")


def test_case4_export_into_missing_folder_names_the_folder(tmp_path):
    pack = valid_pack(tmp_path / "p.safetensors")
    line = one_line_error(_run("pack", "export", pack, "-o", tmp_path / "no" / "c.json"))
    assert f"folder {tmp_path / 'no'} does not exist" in line and ".tmp" not in line


def test_case4_export_keeps_mode_and_leaves_no_temp(tmp_path, monkeypatch):
    pack = valid_pack(tmp_path / "p.safetensors")
    out = tmp_path / "c.json"
    out.write_text("old")
    os.chmod(out, 0o644)
    assert _run("pack", "export", pack, "-o", out).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    one_line_error(_run("pack", "export", pack, "-o", out), "no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "p.safetensors"]


def test_case4_failure_partway_keeps_finished_completions(tiny_model_dir, tmp_path, monkeypatch):
    from .test_generate import _random_heads_pack
    from accel.runtime import engine
    from accel.runtime.models import load_model

    pack = _random_heads_pack(load_model(str(tiny_model_dir), device="cpu"), tmp_path / "h.safetensors")
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in enumerate(["hello", "abc", "xyz"])))
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    real, calls = engine.Engine.generate, []

    def second_fails(self, prompts, sampling, *, on_result=None, **kw):
        def on_result_then_stop(row, result):  # Ctrl-C while the second prompt is being generated
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            on_result(row, result)
        return real(self, prompts, sampling, on_result=on_result_then_stop, **kw)

    monkeypatch.setattr(engine.Engine, "generate", second_fails)
    r = _run("generate", "-p", f, "-m", tiny_model_dir, "--pack", pack, "--medusa", "-n", 4, "-o", out)
    assert r.exit_code == 130
    one_line_error(r, "interrupted; the 1 of 3 completions finished before it were written to")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors", "o.jsonl", "p.jsonl"]
    # nothing finished: the old file stays
    calls.clear()
    monkeypatch.setattr(engine.Engine, "generate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    one_line_error(_run("generate", "-p", f, "-m", tiny_model_dir, "--pack", pack, "--medusa", "-n", 4, "-o", out),
                   "no completion had finished")
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["0"]


def test_case4_cuda_oom_is_one_line_with_the_way_out(tiny_model_dir, prompts, monkeypatch):
    from accel.runtime import generate as g

    def oom(self, *a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore text")

    monkeypatch.setattr(g.Generator, "run", oom)
    line = one_line_error(_run("generate", "-p", prompts, "-m", tiny_model_dir, "-n", 2), "out of memory")
    assert "--max-new-tokens" in line and "shorter prompts" in line


def test_on_completion_called_as_each_is_final(tiny_model_dir):
    from accel.runtime.generate import GenerationConfig, Generator

    gen = Generator.load(str(tiny_model_dir), device="cpu", config=GenerationConfig(max_new_tokens=3))
    seen = []
    done = gen.run([Prompt("a", prompt="hi"), Prompt("b", prompt="yo")], on_completion=seen.append)
    assert seen == done and [c.id for c in seen] == ["a", "b"]


# -- 5. no size bound on prompt files ---------------------------------------------------------------

def test_case5_huge_txt_refused_while_reading(tmp_path, tiny_model_dir, no_model_load):
    import tracemalloc

    f = tmp_path / "huge.txt"
    with open(f, "wb") as h:
        h.truncate(200 * 2**20)  # 200 MB (sparse: costs no disk)
        h.seek(0)
        h.write(b"a")
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(PromptError, match="larger than"):
        read_prompt_file(str(f), context_length=8192)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 2 and peak < 4 * max_prompt_bytes(8192)
    # the CLI scales the limit to the model folder's context (512 tokens -> 64 KiB) before loading it
    one_line_error(_run("generate", "-p", f, "-m", tiny_model_dir), "64 KiB")


def test_case5_huge_jsonl_line_and_file(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": "' + "x" * (max_prompt_bytes(512) + 10) + '"}\n')
    with pytest.raises(PromptError, match="q.jsonl:2: line longer than"):
        read_prompt_file(str(f), context_length=512)


# -- 6. valid JSONL rejected ----------------------------------------------------------------------

@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\r"])
def test_case6_jsonl_splits_on_newline_only(tmp_path, sep):
    f = tmp_path / "q.jsonl"
    f.write_bytes((json.dumps({"id": "a", "prompt": f"one{sep}two"}, ensure_ascii=False) + "\r\n"
                   + json.dumps({"id": "b", "prompt": "x"}) + "\n").encode())
    a, b = read_prompt_file(str(f))
    assert a.prompt == f"one{sep}two" and b.id == "b"


# -- 7. pack validation gaps ----------------------------------------------------------------------

@pytest.mark.parametrize("bad,needle", [(lambda t: t.to(torch.int32), "dtype int32"),
                                        (lambda t: t > 0, "dtype bool"),
                                        (lambda t: t.double(), "dtype float64"),
                                        (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN or Inf"),
                                        (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN or Inf")])
def test_case7_head_tensor_dtype_and_finiteness(tmp_path, bad, needle):
    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    tensors["blocks.0.layers.0.weight"] = bad(tensors["blocks.0.layers.0.weight"])
    write_raw(path, meta, tensors)
    with pytest.raises(PackError, match=needle) as e:
        load_pack(path)
    assert str(path) in str(e.value) and "blocks.0.layers.0.weight" in str(e.value)


@pytest.mark.parametrize("entry,needle", [(["vertical_and_slash", "x", 10, 0.5], "size_1 must be an integer, got 'x'"),
                                          (["stream_llm", -1, 10, 0.5], "size_1 = -1 is out of range"),
                                          (["stream_llm", 10, 2**40, 0.5], "size_2 = "),
                                          (["stream_llm", 1.5, 10, 0.5], "size_1 must be an integer"),
                                          (["stream_llm", True, 10, 0.5], "size_1 must be an integer"),
                                          (["stream_llm", 1, 10, "x"], "score must be a finite number"),
                                          (["stream_llm", 1, 10, float("nan")], "score must be a finite number")])
def test_case7_pattern_sizes_checked_at_load(tmp_path, entry, needle):
    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    patterns = json.loads(meta["accel.patterns"])
    patterns[1]["2"] = entry
    write_raw(path, {**meta, "accel.patterns": json.dumps(patterns)}, tensors)
    with pytest.raises(PackError, match=needle) as e:
        load_pack(path)
    assert str(path) in str(e.value) and "accel.patterns layer 1 head 2" in str(e.value)


def test_case7_other_fields_typed(tmp_path):
    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    for key, value, needle in [("accel.patterns_info", '{"seq_len": "x"}', "seq_len must be an integer"),
                               ("accel.patterns_info", '{"scaling": "magic"}', "scaling must be one of"),
                               ("accel.patterns_info", "[1]", "must be a JSON object"),
                               ("accel.provenance", '"text"', "must be a JSON object"),
                               ("accel.provenance", '{"commands": [1]}', "commands"),
                               ("accel.drafter", '{"num_heads": 2}', "lacks num_layers"),
                               ("accel.drafter", "[]", "must be a JSON object"),
                               ("accel.patterns", "[" * 100000 + "]" * 100000, "nested too deeply")]:
        write_raw(path, {**meta, key: value}, tensors)
        with pytest.raises(PackError, match=needle):
            load_pack(path)


# -- 8. smaller ones --------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [(["-t", "inf"], "--temperature"), (["-t", "nan"], "--temperature"),
                                         (["--top-p", "nan"], "--top-p"),
                                         (["--seed", "1e23"], "--seed"), (["--seed", str(10**23)], "--seed"),
                                         (["--seed", "-1"], "--seed"),
                                         (["-n", "0"], "--max-new-tokens"), (["-n", "-5"], "--max-new-tokens"),
                                         (["--bogus"], "No such option"),
                                         (["--tree", "T[[0.5]]"], "integers"), (["--tree", "T[[1e400]]"], "integers"),
                                         (["--tree", "T[[0], [0, 0]]", "--no-medusa"], "--no-medusa"),
                                         (["--tree", "T[[" * 5000], "not JSON")])
def test_case8_option_values(tmp_path, prompts, args, needle, no_model_load):
    out = []
    for a in args:
        if a.startswith("T"):
            (tmp_path / "tree.json").write_text(a[1:])
            a = str(tmp_path / "tree.json")
        out.append(a)
    one_line_error(_run("generate", "-p", prompts, *out), needle)


def test_case8_tree_without_medusa_on_cpu(tmp_path, prompts, tiny_model_dir):
    (tmp_path / "tree.json").write_text("[[0], [0, 0]]")
    one_line_error(_run("generate", "-p", prompts, "-m", tiny_model_dir, "--tree", tmp_path / "tree.json"),
                   "Medusa decoding is off here")


def test_case8_force_warning_is_one_line(tmp_path, prompts, tiny_model_dir):
    from accel.runtime.pack import Pack, save_pack

    pack = save_pack(Pack("other", "0123456789abcdef", patterns=[{str(h): ["dense", 0, 0, 1.0] for h in range(4)}] * 2),
                     tmp_path / "x.safetensors")
    r = _run("generate", "-p", prompts, "-m", tiny_model_dir, "--pack", pack, "--force", "-n", 2, "-o", tmp_path / "o.jsonl")
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if ln.startswith("warning") or "Warning" in ln or "warn(" in ln]
    assert len(warn) == 1 and warn[0].startswith("warning:") and "--force" in warn[0], r.output


def test_case8_shipped_pack_holds_no_machine_paths():
    from accel.runtime.generate import default_pack_path

    p = load_pack(default_pack_path())
    text = json.dumps([p.provenance, p.patterns_info, p.medusa])
    for needle in ('"/', " /", "/root", "/home", "/tmp"):
        assert needle not in text, needle


def test_case8_command_line_records_no_absolute_paths(tmp_path, monkeypatch):
    from accel.cli.common import _portable

    monkeypatch.chdir(tmp_path)
    assert _portable(str(tmp_path / "out" / "p.safetensors")) == os.path.join("out", "p.safetensors")
    assert _portable("/elsewhere/p.safetensors") == "p.safetensors"
    assert _portable("smollm2-135m") == "smollm2-135m" and _portable("0.5") == "0.5"


@pytest.mark.parametrize("cmd", ["search-patterns", "train-heads", "generate"])
def test_case8_trust_remote_code_everywhere(cmd):
    from typer.main import get_command

    params = get_command(app).commands[cmd].params
    assert any("--trust-remote-code" in p.opts for p in params)
    assert next(p for p in params if "--trust-remote-code" in p.opts).default is False


def test_case8_model_folder_without_tokenizer(tmp_path, prompts):
    from .conftest import make_tiny_llama

    make_tiny_llama().save_pretrained(tmp_path / "m")
    line = one_line_error(_run("generate", "-p", prompts, "-m", tmp_path / "m"), "no tokenizer files")
    assert line.rstrip().endswith("next to config.json")


def test_case8_crlf_txt(tmp_path):
    f = tmp_path / "w.txt"
    f.write_bytes(b"line one\r\nline two\r\n")
    [p] = read_prompt_file(str(f))
    assert p.prompt == "line one\nline two"


def test_case8_truncate_left_keeps_the_chat_header():
    tok = make_tokenizer()
    long = Prompt("long", messages=[{"role": "system", "content": "be nice"},
                                    {"role": "user", "content": "OLD " * 40 + "NEWEST"}])
    ids = encode_prompt(tok, long, context_length=100, max_new_tokens=10, truncate="left")
    text = tok.decode(ids)
    assert len(ids) <= 90 and text.startswith("<|system|>be nice<|end|><|user|>")
    assert text.endswith("NEWEST<|end|><|assistant|>") and "OLD " * 40 not in text
    # several user turns: the oldest goes first
    turns = Prompt("t", messages=[{"role": "user", "content": "A" * 60}, {"role": "assistant", "content": "ok"},
                                  {"role": "user", "content": "B" * 20}])
    text = tok.decode(encode_prompt(tok, turns, context_length=80, max_new_tokens=10, truncate="left"))
    assert "B" * 20 in text and text.endswith("<|assistant|>") and text.startswith("<|user|>A")
    with pytest.raises(PromptError, match="template alone"):
        encode_prompt(tok, long, context_length=14, max_new_tokens=10, truncate="left")


def test_case6_training_jsonl_splits_on_newline_only(tmp_path):
    from accel.heads.data import load_data_file, load_prompt_file

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a\u2028b\u0085c"}, ensure_ascii=False) + "\r\n" + json.dumps({"text": "d"}) + "\n")
    assert load_data_file(f) == ["a\u2028b\u0085c", "d"]
    f.write_text(json.dumps({"id": "x", "prompt": "p\u2028q"}, ensure_ascii=False) + "\n")
    assert load_prompt_file(f)[0]["messages"][0]["content"] == "p\u2028q"


def test_case1_newline_in_a_file_name_stays_on_one_line(no_model_load):
    line = one_line_error(_run("generate", "-p", "a\nb.txt"), "not found")
    assert line.endswith("a\\nb.txt")


def test_case4_disk_full_mid_run_prints_finished_completions(tiny_model_dir, tmp_path, monkeypatch):
    """The output cannot be written (ENOSPC on fsync): the finished completions reach stdout, not the void."""
    import errno

    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "prompt": "hello"}\n{"id": "b", "prompt": "abc"}\n')
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    r = _run("generate", "-p", f, "-m", tiny_model_dir, "-n", 3, "-o", out)
    assert r.exit_code == 2 and "Traceback" not in r.output
    err_lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and "no space left on device" in err_lines[0] and "2 finished" in err_lines[0]
    assert [json.loads(ln)["id"] for ln in r.stdout.splitlines() if ln.strip()] == ["a", "b"]
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "p.jsonl"]


def test_case8_chat_template_refusal_is_a_prompt_error():
    tok = make_tokenizer()
    tok.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must alternate\\nuser/assistant') }}{% endif %}x"
    with pytest.raises(PromptError, match="prompt a: the model's chat template refused the messages: roles must alternate user/assistant"):
        encode_prompt(tok, Prompt("a", messages=[{"role": "assistant", "content": "hi"}]), context_length=100,
                      max_new_tokens=10)


def test_case6_unpaired_surrogate_anywhere_in_the_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"prompt": "ok", "meta": {"note": ["\\udc00"]}}\n')
    with pytest.raises(PromptError, match="q.jsonl:1: a string holds an unpaired surrogate"):
        read_prompt_file(str(f))


@pytest.mark.parametrize("cmd", [["bench", "prefill"], ["bench", "decode"], ["bench", "kernels"], ["bench", "quality"]])
def test_case4_bench_json_checked_before_the_benchmark(tmp_path, cmd):
    one_line_error(_run(*cmd, "--json", tmp_path), "is a folder")
    one_line_error(_run(*cmd, "--json", "/dev/null"), "character device")


def test_case7_broken_pack_fails_before_the_model_loads(tmp_path, prompts, no_model_load):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    one_line_error(_run("generate", "-p", prompts, "--pack", bad), "not an accel pack")


def test_case2_huge_metadata_field_refused_before_parsing(tmp_path):
    import resource

    path = valid_pack(tmp_path / "p.safetensors")
    meta, tensors = read_raw(path)
    write_raw(path, {**meta, "accel.patterns": "[" + "0," * (10 * 2**20) + "0]"}, tensors)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    with pytest.raises(PackError, match="accel.patterns is 20 MiB of text"):
        load_pack(path)
    assert time.perf_counter() - t0 < 2 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0 < 500
