"""`accel train-heads` through the CLI: a pack with heads, merging, resume, and bad input."""

import pytest
from typer.testing import CliRunner

from accel.cli import app
from accel.runtime.models import load_model
from accel.runtime.pack import Pack, load_pack, save_pack

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(map(str, args)))


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text(("the cat sat on the mat and the dog sat on the log. " * 30 + "\n") * 4)
    return f


def _train(tiny_model_dir, out, data, *extra):
    return _run("train-heads", "--model", tiny_model_dir, "--data", data, "--output", out, "--steps", 6,
                "--batch-size", 2, "--seq-len", 64, "--num-heads", 2, "--tree-nodes", 5, "--warmup", 1, *extra)


def test_train_heads_writes_heads_and_keeps_patterns(tiny_model_dir, tmp_path, text_file):
    lm = load_model(str(tiny_model_dir), device="cpu")
    pats = [{str(h): ["stream_llm", 16, 64, 0.9] for h in range(4)} for _ in range(2)]
    out = save_pack(Pack(lm.name, lm.fingerprint, patterns=pats, provenance={"search_patterns": {"x": 1}}),
                    tmp_path / "p.safetensors")
    r = _train(tiny_model_dir, out, text_file)
    assert r.exit_code == 0, r.output
    p = load_pack(out)
    assert p.patterns == pats and p.has_heads
    assert p.medusa["num_heads"] == 2 and len(p.medusa["tree"]) == 5
    assert len(p.medusa["rank_acceptance"]) == 2
    assert p.provenance["search_patterns"] == {"x": 1}  # earlier provenance kept
    assert "train-heads" in p.provenance["commands"]["train_heads"]
    assert set(p.provenance["train_heads"]["metrics"]["top1"]) or p.provenance["train_heads"]["metrics"]["top1"] == []


def test_train_heads_resume_reaches_same_pack(tiny_model_dir, tmp_path, text_file):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert _train(tiny_model_dir, a, text_file, "--checkpoint-every", 2).exit_code == 0
    # a second run with --resume finds the finished checkpoint and reproduces the same heads
    assert _train(tiny_model_dir, b, text_file, "--checkpoint-every", 2, "--resume",
                  "--checkpoint-dir", str(a) + ".ckpt").exit_code == 0
    pa, pb = load_pack(a), load_pack(b)
    for k in pa.heads:
        assert (pa.heads[k] == pb.heads[k]).all()


def _one_line_error(r, needle):
    assert r.exit_code != 0
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], r.output
    assert "Traceback" not in r.output


def test_train_heads_bad_input(tiny_model_dir, tmp_path, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _one_line_error(_train(tiny_model_dir, tmp_path / "o.safetensors", empty), "empty")
    _one_line_error(_train(tiny_model_dir, tmp_path / "o.safetensors", tmp_path / "none.txt"), "not found")
    _one_line_error(_run("train-heads", "--model", tiny_model_dir, "--data", text_file, "--prompts", text_file,
                         "--output", tmp_path / "o.safetensors"), "not both")
    other = save_pack(Pack("x", "feedfacefeedface", patterns=[{"0": ["dense", 0, 0, 1.0]}]), tmp_path / "other.safetensors")
    before = other.read_bytes()
    _one_line_error(_train(tiny_model_dir, other, text_file), "--force")
    assert other.read_bytes() == before  # nothing already in the pack is lost
