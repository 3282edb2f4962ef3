"""`accel train-heads --drafter eagle` through the CLI: a loadable draft file, the EAGLE-3 export, resume, bad input."""

import json

from typer.testing import CliRunner

from accel.cli import app
from accel.runtime.drafters.eagle_io import load_eagle
from accel.runtime.models import load_model
from accel.runtime.pack import Pack, save_pack

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(map(str, args)))


def _train(tiny_model_dir, out, data, *extra):
    return _run("train-heads", "--drafter", "eagle", "--model", tiny_model_dir, "--data", data, "--output", out,
                "--steps", 4, "--batch-size", 2, "--seq-len", 48, "--warmup", 1, "--ttt-steps", 2, *extra)


def _one_line_error(r, needle):
    assert r.exit_code != 0
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], r.output
    assert "Traceback" not in r.output


def test_train_eagle_writes_draft_export_and_resumes(tiny_model_dir, tmp_path):
    text = tmp_path / "data.txt"
    text.write_text(("the cat sat on the mat and the dog sat on the log. " * 12 + "\n") * 4)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    r = _train(tiny_model_dir, a, text, "--checkpoint-every", 2, "--export-eagle3", tmp_path / "e3")
    assert r.exit_code == 0, r.output
    draft, meta = load_eagle(a)
    lm = load_model(str(tiny_model_dir), device="cpu")
    assert meta["fingerprint"] == lm.fingerprint and draft.config.hidden_size == 64
    m = meta["provenance"]["train_heads"]["metrics"]
    assert len(m["train_accept"]) == 2 and "--drafter" in meta["provenance"]["commands"]["train_heads"]
    cfg = json.loads((tmp_path / "e3" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and (tmp_path / "e3" / "model.safetensors").exists()
    # a second run with --resume finds the finished checkpoint and reproduces the same draft
    r = _train(tiny_model_dir, b, text, "--checkpoint-every", 2, "--resume", "--checkpoint-dir", str(a) + ".ckpt")
    assert r.exit_code == 0, r.output
    d2, _ = load_eagle(b)
    sa, sb = draft.state_dict(), d2.state_dict()
    assert all((sa[k] == sb[k]).all() for k in sa)


def test_train_eagle_bad_input(tiny_model_dir, tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("the cat sat on the mat. " * 40)
    _one_line_error(_run("train-heads", "--drafter", "hydra", "--model", tiny_model_dir, "--data", text,
                         "--output", tmp_path / "o.safetensors"), "--drafter")
    _one_line_error(_run("train-heads", "--model", tiny_model_dir, "--data", text, "--output",
                         tmp_path / "o.safetensors", "--export-eagle3", tmp_path / "x"), "--drafter eagle")
    _one_line_error(_train(tiny_model_dir, tmp_path / "o.safetensors", text, "--eagle-loss", "mse"), "loss")
    lm = load_model(str(tiny_model_dir), device="cpu")
    pack = save_pack(Pack(lm.name, lm.fingerprint, patterns=[{"0": ["dense", 0, 0, 1.0]}] * 2), tmp_path / "p.safetensors")
    before = pack.read_bytes()
    _one_line_error(_train(tiny_model_dir, pack, text), "acceleration pack")
    assert pack.read_bytes() == before


def test_train_eagle_into_pack_keeps_patterns_and_decodes(tiny_model_dir, tmp_path):
    from accel.runtime.decode import generate_plain
    from accel.runtime.drafters import EagleDrafter
    from accel.runtime.engine import Engine, Sampling
    from accel.runtime.model import CompactLM
    from accel.runtime.pack import load_pack

    text = tmp_path / "data.txt"
    text.write_text(("the cat sat on the mat and the dog sat on the log. " * 12 + "\n") * 4)
    lm = load_model(str(tiny_model_dir), device="cpu")
    heads = lm.model.config.num_attention_heads
    patterns = [{str(h): ["dense", 0, 0, 1.0] for h in range(heads)}] * lm.model.config.num_hidden_layers
    pack = save_pack(Pack(lm.name, lm.fingerprint, patterns=patterns), tmp_path / "p.safetensors")
    r = _train(tiny_model_dir, pack, text, "--pack", pack)
    assert r.exit_code == 0, r.output
    p = load_pack(pack)
    assert p.drafter_kind == "eagle" and p.patterns == patterns and p.has_drafter
    r = _run("pack", "inspect", pack)
    assert r.exit_code == 0 and "eagle" in r.output, r.output
    cm = CompactLM.from_hf(lm.model)
    eng = Engine(cm, EagleDrafter.from_pack(p, cm), mode=False)
    prompt = [1, 5, 7, 9, 11, 13]
    assert eng.generate([prompt], Sampling(12))[0].tokens == generate_plain(cm, [prompt], 12)[0].tokens
    # `accel generate --pack` decodes with the pack's EAGLE drafter (--medusa = use the pack's drafter)
    f = tmp_path / "prompts.txt"
    f.write_text("the cat sat\n")
    outs = []
    for flag in ("--medusa", "--no-medusa"):
        o = tmp_path / f"o{flag}.jsonl"
        r = _run("generate", "--prompt-file", f, "--model", tiny_model_dir, "--pack", pack, "-n", 8, flag, "--output", o)
        assert r.exit_code == 0, r.output
        outs.append([json.loads(l)["text"] for l in o.read_text().splitlines()])
    assert outs[0] == outs[1]
    # `accel pack export --format eagle3` writes the SGLang / vLLM layout from the pack
    r = _run("pack", "export", pack, "--format", "eagle3", "--model", tiny_model_dir, "-o", tmp_path / "e3")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "e3" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and (tmp_path / "e3" / "model.safetensors").exists()
    _one_line_error(_run("pack", "export", pack, "--format", "eagle3", "-o", tmp_path / "e4"), "--model")


def test_train_eagle_into_a_pack_time_boxed_bf16(tiny_model_dir, tmp_path):
    """The lead's GPU call: --pack P --max-minutes M writes a pack whose EAGLE tensors are bf16 and records
    how many steps ran; --max-minutes is refused for Medusa in one line."""
    from accel.runtime.pack import load_pack

    text = tmp_path / "data.txt"
    text.write_text(("the cat sat on the mat and the dog sat on the log. " * 12 + "\n") * 4)
    lm = load_model(str(tiny_model_dir), device="cpu")
    base = save_pack(Pack(lm.name, lm.fingerprint, patterns=None), tmp_path / "base.safetensors")
    out = tmp_path / "eagle.pack.safetensors"
    r = _train(tiny_model_dir, out, text, "--pack", base, "--max-minutes", 0.0001, "--checkpoint-dir",
               tmp_path / "ck")
    assert r.exit_code == 0, r.output
    pk = load_pack(out)
    assert pk.drafter_kind == "eagle" and all(str(t.dtype) == "torch.bfloat16" for t in pk.tensors.values())
    assert pk.provenance["train_heads"]["metrics"]["steps_done"] == 1
    _one_line_error(_run("train-heads", "--model", tiny_model_dir, "--data", text, "--output",
                         tmp_path / "o.safetensors", "--max-minutes", 1), "--drafter eagle")
