"""The CLI through typer's CliRunner: help, plain generate end to end, and one-line errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.cli import app
from accel.runtime.models import load_model
from accel.runtime.pack import Pack, save_pack

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(map(str, args)))


def _one_line_error(result, needle):
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert needle in lines[0], lines[0]


def test_help_lists_all_commands():
    r = _run("--help")
    assert r.exit_code == 0
    for cmd in ("search-patterns", "train-heads", "generate", "bench", "pack"):
        assert cmd in r.output


@pytest.fixture
def prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"id": "a", "prompt": "hello"}\n{"id": "b", "messages": [{"role": "user", "content": "hey there"}]}\n')
    return f


def test_generate_plain_to_jsonl_matches_greedy(tiny_model_dir, prompts, tmp_path):
    out = tmp_path / "o.jsonl"
    r = _run("generate", "--prompt-file", prompts, "--model", tiny_model_dir, "-n", 6, "--output", out)
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["a", "b"]
    assert all({"id", "text", "num_new_tokens", "num_prompt_tokens"} <= set(row) for row in rows)
    # the first prompt's text equals an independent greedy decode of the same model
    lm = load_model(str(tiny_model_dir), device="cpu")
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True)
    x = torch.tensor([lm.tokenizer(ids, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        for _ in range(6):
            x = torch.cat([x, lm.model(x).logits[:, -1:].argmax(-1)], 1)
    want = x[0, -6:].tolist()
    want = want[: want.index(2)] if 2 in want else want
    assert rows[0]["num_new_tokens"] == len(want)
    assert rows[0]["text"] == lm.tokenizer.decode(want, skip_special_tokens=True)


def test_generate_text_to_stdout(tiny_model_dir, tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("hello")
    r = _run("generate", "--prompt-file", f, "--model", tiny_model_dir, "-n", 3, "--temperature", 0.8, "--seed", 1)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("setup,args,needle", [
    ("missing", [], "not found"),
    ("empty", [], "is empty"),
    ("badjson", [], "not valid JSON"),
    ("binary", [], "not UTF-8"),
    ("ok", ["--model", "no-such-model"], "unknown model"),
    ("ok", ["--temperature", "-1"], "--temperature"),
    ("ok", ["--top-p", "0"], "--top-p"),
    ("ok", ["--truncate", "right"], "--truncate"),
    ("ok", ["--compile", "turbo"], "--compile"),
    ("ok", ["--pack", "missing.safetensors"], "pack not found"),
])
def test_generate_bad_input(tmp_path, tiny_model_dir, setup, args, needle):
    f = tmp_path / "p.jsonl"
    content = {"empty": b"", "badjson": b"{oops\n", "binary": b"\xff\xfe\xfa", "ok": b'{"prompt": "hi"}\n'}
    if setup != "missing":
        f.write_bytes(content[setup])
    extra = [str(tmp_path / a) if a.endswith(".safetensors") else a for a in args]
    if "--model" not in extra:
        extra += ["--model", str(tiny_model_dir)]
    _one_line_error(_run("generate", "--prompt-file", f, *extra), needle)


def test_generate_prompt_too_long(tmp_path, tiny_model_dir):
    f = tmp_path / "long.txt"
    f.write_text("x" * 600)  # the tiny model's context is 512 tokens
    _one_line_error(_run("generate", "--prompt-file", f, "--model", tiny_model_dir, "-n", 4), "--truncate left")
    r = _run("generate", "--prompt-file", f, "--model", tiny_model_dir, "-n", 4, "--truncate", "left", "--no-chat")
    assert r.exit_code == 0, r.output


def test_generate_refuses_pack_for_other_model(tmp_path, tiny_model_dir, prompts):
    pack = save_pack(Pack("other", "0123456789abcdef", patterns=[{"0": ["dense", 0, 0, 1.0]}]), tmp_path / "x.safetensors")
    _one_line_error(_run("generate", "--prompt-file", prompts, "--model", tiny_model_dir, "--pack", pack), "--force")


def test_output_is_not_half_written_on_error(tmp_path, tiny_model_dir):
    out = tmp_path / "o.jsonl"
    out.write_text("precious\n")
    f = tmp_path / "p.jsonl"
    f.write_text("{bad\n")
    _one_line_error(_run("generate", "--prompt-file", f, "--model", tiny_model_dir, "-o", out), "not valid JSON")
    assert out.read_text() == "precious\n"


def test_pack_inspect_and_export(tmp_path):
    pack = save_pack(Pack("tiny", "fp", patterns=[{"0": ["vertical_and_slash", 10, 20, 0.9], "1": ["dense", 0, 0, 1.0]}]),
                     tmp_path / "p.safetensors")
    r = _run("pack", "inspect", pack)
    assert r.exit_code == 0 and "vertical_and_slash" in r.output and "heads: none" in r.output
    r = _run("pack", "export", pack, "--format", "minference", "--output", tmp_path / "c.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c.json").read_text())[0]["0"][0] == "vertical_and_slash"
    _one_line_error(_run("pack", "export", pack, "--format", "onnx", "--output", tmp_path / "c.json"), "--format")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    _one_line_error(_run("pack", "inspect", tmp_path / "junk.safetensors"), "not a readable")
