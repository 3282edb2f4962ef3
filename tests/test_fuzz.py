"""Structure-aware fuzzing of the pack loader and the prompt reader (issue 13).

Every case starts from a *valid* input and applies one or two seeded mutations that aim at a validation
stage: safetensors framing (header length, offsets, dtypes, shapes, truncation), each ``accel.*`` metadata
field (deleted, wrong JSON type, hostile values deep inside the JSON: huge/negative/float/bool numbers,
NaN, deep nesting, control characters), head tensors (dtype, shape, NaN/Inf, names); for prompt files:
line separators inside strings (U+2028, U+0085, CR), CRLF, BOM, bad UTF-8, huge lines, nesting, wrong
field types, duplicate ids. Cases are deterministic (``random.Random(seed)``).

Per case the contract is asserted: success, or exactly one stderr line starting with "error:"; no
traceback; at most 2 s; at most 500 MB of new peak memory (``ru_maxrss``; plus ``tracemalloc`` for the
pure-Python reader); the input file byte-identical afterwards. Most cases run the real CLI in-process
(typer's CliRunner: parsing, loading and printing, without paying the interpreter start-up); a sample
runs ``accel`` in a subprocess. The model is replaced by a stub for prompt cases: the reader runs
before the model loads, and the model is not what is being fuzzed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest
import torch
from typer.testing import CliRunner

from accel.cli import app
from accel.runtime.errors import AccelError
from accel.runtime.prompts import read_prompt_file
from .hostile_inputs import read_raw, valid_eagle_pack, valid_pack

N_PACK, N_PROMPT = 240, 240
MAX_S, MAX_MB = 2.0, 500
CONTEXT = 512  # the prompt limits are scaled to a 512-token context: max_prompt_bytes = 64 KiB

runner = CliRunner()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _check_cli(args, path, *, expect_ok: bool | None = None):
    before, rss0, t0 = _sha(path), _maxrss_mb(), time.perf_counter()
    r = runner.invoke(app, [str(a) for a in args])
    wall = time.perf_counter() - t0
    assert wall <= MAX_S, f"took {wall:.2f} s"
    assert _maxrss_mb() - rss0 <= MAX_MB, "peak memory grew by more than 500 MB"
    assert _sha(path) == before, "the input file changed"
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "internal error" not in lines[0], lines[0]
    if expect_ok is not None:
        assert (r.exit_code == 0) == expect_ok, r.output
    return r


# ----------------------------------------------------------------------------------------- packs

HOSTILE_VALUES = [None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, 1.5, 1e308, -0.0, float("nan"), float("inf"),
                  "", "x", "\x1b[2J\x1b]0;t\x07", "[bold]x[/]", "\u202e\u2028", [], {}, [[0]] * 1500, [0] * 5,
                  {"a": 1}, "9" * 400]
DTYPES = [torch.int32, torch.int8, torch.uint8, torch.bool, torch.float64, torch.float16, torch.bfloat16, torch.int64]


def _json_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:6]):
            yield from _json_paths(v, prefix + (i,))


def _set(obj, path, value, delete=False):
    if not path:
        return value
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


def _mutate_meta_json(rng, meta):
    key = rng.choice([k for k in meta if k.startswith("accel.") and k not in ("accel.format_version",)])
    try:
        obj = json.loads(meta[key])
    except ValueError:
        obj = meta[key]
    if not isinstance(obj, (dict, list)):
        meta[key] = rng.choice(["", "x" * 2000, "\x1b[31mred", "[link=x]y", "\x00"])
        return f"{key}=text"
    path = rng.choice(list(_json_paths(obj)))
    if rng.random() < 0.2 and path:
        obj = _set(obj, path, None, delete=True)
        what = "del"
    else:
        obj = _set(obj, path, rng.choice(HOSTILE_VALUES))
        what = "set"
    meta[key] = json.dumps(obj)  # NaN/Infinity are written as JSON's de-facto extension, as Python does
    return f"{key}{list(path)}:{what}"


def _mutate_meta_raw(rng, meta):
    key = rng.choice(["accel.format_version", "accel.drafter", "accel.drafter.kind", "accel.patterns", "accel.patterns_info",
                      "accel.provenance", "accel.fingerprint", "accel.base_model"])
    if rng.random() < 0.3:
        meta.pop(key, None)
        return f"drop {key}"
    meta[key] = rng.choice(["", "null", "[]", "{}", "1e999", "NaN", "-1", "1" * 5000, '"s"', "[" * 50000,
                            "{" * 20 + "}", "true", "[1, 2", "\x1b[2J", "2", "0"])
    return f"{key}=raw"


def _mutate_tensors(rng, tensors):
    key = rng.choice(sorted(tensors))
    t = tensors[key]
    op = rng.choice(["dtype", "shape", "nan", "inf", "drop", "extra", "rename", "empty"])
    if op == "dtype":
        tensors[key] = t.to(rng.choice(DTYPES))
    elif op == "shape":
        tensors[key] = rng.choice([t.reshape(-1), t.reshape(1, *t.shape), t.t().contiguous() if t.dim() == 2 else t[:-1],
                                   t[: max(t.shape[0] - 1, 0)]])
    elif op in ("nan", "inf"):
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = float(op)
        tensors[key] = t
    elif op == "drop":
        del tensors[key]
    elif op == "extra":
        tensors[f"blocks.{rng.randrange(100)}.layers.0.weight"] = torch.zeros(rng.randrange(1, 8))
    elif op == "rename":
        tensors["x" + key] = tensors.pop(key)
    else:
        tensors[key] = torch.zeros(0)
    return f"tensor {key} {op}"


def _mutate_bytes(rng, data: bytes) -> tuple[bytes, str]:
    n = struct.unpack("<Q", data[:8])[0]
    op = rng.choice(["truncate", "truncate_header", "flip_header", "len_huge", "len_zero", "len_off", "append"])
    if op == "truncate":
        return data[: rng.randrange(len(data))], op
    if op == "truncate_header":
        return data[: rng.randrange(8, 8 + n)], op
    if op == "flip_header":
        i = rng.randrange(8, 8 + n)
        return data[:i] + bytes([data[i] ^ rng.choice([1, 0x20, 0x80, 0xFF])]) + data[i + 1:], op
    if op == "len_huge":
        return struct.pack("<Q", rng.choice([2**63, 2**40, 10**8])) + data[8:], op
    if op == "len_zero":
        return struct.pack("<Q", 0) + data[8:], op
    if op == "len_off":
        return struct.pack("<Q", n + rng.choice([-9, -1, 1, 7, 64])) + data[8:], op
    return data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), op


def _mutate_header(rng, data: bytes) -> tuple[bytes, str]:
    """Edit the safetensors header JSON itself: dtypes, shapes, offsets, metadata types."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8: 8 + n])
    body = data[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    op = rng.choice(["dtype", "shape", "offsets", "meta_type", "meta_nonstr", "dup_offsets"])
    if op == "meta_type":
        header["__metadata__"] = rng.choice([[], "x", 1, None])
    elif op == "meta_nonstr":
        header["__metadata__"]["accel.drafter"] = {"num_heads": 1}
    else:
        k = rng.choice(names)
        if op == "dtype":
            header[k]["dtype"] = rng.choice(["F8_E4M3", "I64", "BOOL", "U8", "F64", "XYZ", "", 7])
        elif op == "shape":
            header[k]["shape"] = rng.choice([[10**12], [-1], [], [0], [2**31, 2**31], ["a"], None])
        elif op == "offsets":
            header[k]["data_offsets"] = rng.choice([[0, 10**12], [5, 1], [-1, 4], [0], None, [0, 0]])
        else:
            other = rng.choice(names)
            header[k]["data_offsets"] = header[other]["data_offsets"]
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body, f"header {op}"


@pytest.fixture(scope="module")
def base_pack(tmp_path_factory):
    path = valid_pack(tmp_path_factory.mktemp("fuzz") / "base.safetensors", num_heads=2)
    meta, tensors = read_raw(path)
    return path.read_bytes(), meta, tensors


def _pack_case(seed: int, base) -> tuple[bytes, str]:
    from safetensors.torch import save

    rng = random.Random(seed)
    data, meta, tensors = base
    meta, tensors = dict(meta), dict(tensors)
    kind = seed % 5
    if kind == 0:
        return _mutate_bytes(rng, data)
    if kind == 1:
        return _mutate_header(rng, data)
    what = []
    for _ in range(1 + (rng.random() < 0.3)):
        if kind == 2:
            what.append(_mutate_meta_json(rng, meta))
        elif kind == 3:
            what.append(_mutate_meta_raw(rng, meta))
        else:
            what.append(_mutate_tensors(rng, tensors))
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta), "; ".join(what)


@pytest.mark.parametrize("seed", range(N_PACK))
def test_fuzz_pack(seed, base_pack, tmp_path):
    data, what = _pack_case(seed, base_pack)
    path = tmp_path / "p.safetensors"
    path.write_bytes(data)
    _check_cli(["pack", "inspect", path], path)
    if seed % 8 == 0:  # and the export path, which must never touch the pack
        _check_cli(["pack", "export", path, "-o", tmp_path / "c.json"], path)


@pytest.fixture(scope="module")
def eagle_pack(tmp_path_factory):
    path = valid_eagle_pack(tmp_path_factory.mktemp("fuzz") / "eagle.safetensors")
    meta, tensors = read_raw(path)
    return path.read_bytes(), meta, tensors


@pytest.mark.parametrize("seed", range(N_PACK // 4))
def test_fuzz_eagle_pack(seed, eagle_pack, tmp_path):
    """The same mutations on a pack whose drafter is EAGLE (accel.drafter.kind = "eagle"): its config and
    tensors go through the same bounded loader."""
    data, what = _pack_case(seed, eagle_pack)
    path = tmp_path / "p.safetensors"
    path.write_bytes(data)
    _check_cli(["pack", "inspect", path], path)


def test_fuzz_eagle_pack_unmutated_loads(eagle_pack, tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(eagle_pack[0])
    _check_cli(["pack", "inspect", path], path, expect_ok=True)


def test_fuzz_pack_unmutated_loads(base_pack, tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(base_pack[0])
    _check_cli(["pack", "inspect", path], path, expect_ok=True)


# --------------------------------------------------------------------------------- prompt files

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x00", "\x1b[2J", "\u202e"]
WRONG = [None, True, 0, 1.5, -1, [], {}, [1], {"role": "user"}, "", " ", "x" * 300, 10**400 if False else 10**30]


def _valid_rows(rng) -> list[dict]:
    rows = []
    for i in range(rng.randrange(1, 5)):
        if rng.random() < 0.5:
            rows.append({"id": f"r{i}", "prompt": f"question {i}: what is {i} + {i}?"})
        else:
            rows.append({"id": i, "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": f"hello {i}"}]})
    return rows


def _prompt_case(seed: int) -> tuple[str, bytes, str]:
    """-> (suffix, file bytes, description)."""
    rng = random.Random(10_000 + seed)
    kind = seed % 8
    if kind == 7:  # .txt files
        text = "Summarise this.\nSecond line.\n"
        op = rng.choice(["crlf", "sep", "bom", "badutf8", "huge", "blank", "nul", "cr_only"])
        if op == "crlf":
            return ".txt", text.replace("\n", "\r\n").encode(), op
        if op == "sep":
            return ".txt", (text + rng.choice(SEPARATORS) + "tail").encode(), op
        if op == "bom":
            return ".txt", b"\xef\xbb\xbf" + text.encode(), op
        if op == "badutf8":
            raw = bytearray(text.encode())
            raw.insert(rng.randrange(len(raw)), rng.choice([0xFF, 0xC0, 0xE2, 0x80]))
            return ".txt", bytes(raw), op
        if op == "huge":
            return ".txt", b"word " * (70_000 // 5 * rng.choice([1, 3])), op
        if op == "blank":
            return ".txt", rng.choice([b"", b"\n\n", b"  \r\n\t"]), op
        if op == "nul":
            return ".txt", b"\x00" * 100, op
        return ".txt", text.replace("\n", "\r").encode(), op
    rows = _valid_rows(rng)
    line_end = "\r\n" if rng.random() < 0.3 else "\n"
    r = rng.choice(rows)
    if kind == 0:  # separators inside strings (valid JSON: must be accepted)
        field = "prompt" if "prompt" in r else "messages"
        sep = rng.choice(SEPARATORS)
        if field == "prompt":
            r["prompt"] = r["prompt"][:5] + sep + r["prompt"][5:]
        else:
            r["messages"][-1]["content"] += sep
        ensure_ascii = rng.random() < 0.5
        text = line_end.join(json.dumps(x, ensure_ascii=ensure_ascii) for x in rows) + line_end
        return ".jsonl", text.encode("utf-8", "surrogatepass"), f"separator {sep!r}"
    if kind == 1:  # wrong types
        key = rng.choice(["id", "prompt", "messages", "role", "content"])
        val = rng.choice(WRONG)
        if key in ("role", "content"):
            r.setdefault("messages", [{"role": "user", "content": "x"}])
            r.pop("prompt", None)
            r["messages"][0][key] = val
        else:
            r[key] = val
        text = line_end.join(json.dumps(x) for x in rows) + line_end
        return ".jsonl", text.encode(), f"{key}={val!r}"[:60]
    if kind == 2:  # nesting
        depth = rng.choice([10, 1000, 100_000])
        r[rng.choice(["prompt", "extra", "id"])] = json.loads("[" * min(depth, 500) + "]" * min(depth, 500)) \
            if depth <= 500 else None
        text = line_end.join(json.dumps(x) for x in rows) + line_end
        if depth > 500:
            text += "[" * depth + "]" * depth + line_end
        return ".jsonl", text.encode(), f"nesting {depth}"
    if kind == 3:  # bad UTF-8 / surrogates
        text = (line_end.join(json.dumps(x, ensure_ascii=False) for x in rows) + line_end).encode()
        op = rng.choice(["byte", "truncated_multibyte", "surrogate_escape", "overlong"])
        if op == "byte":
            i = rng.randrange(len(text))
            text = text[:i] + bytes([rng.choice([0xFF, 0xFE, 0x80])]) + text[i:]
        elif op == "truncated_multibyte":
            text = text.rstrip(b"\r\n") + b"\xe2\x80"
        elif op == "surrogate_escape":
            text = text.replace(b'"}', b'\\ud800"}', 1)
        else:
            text = text + b'{"prompt": "\xc0\xaf"}\n'
        return ".jsonl", text, op
    if kind == 4:  # huge lines
        n = rng.choice([70_000, 200_000])
        r["prompt"] = "y" * n
        r.pop("messages", None)
        text = line_end.join(json.dumps(x) for x in rows) + line_end
        return ".jsonl", text.encode(), f"line of {n} bytes"
    if kind == 5:  # structure: duplicates, blank lines, non-objects, garbage
        op = rng.choice(["dup", "blank", "array", "string", "trailing", "numbers", "bom", "empty_obj", "nan"])
        lines = [json.dumps(x) for x in rows]
        if op == "dup":
            lines.append(json.dumps(rows[0]))
        elif op == "blank":
            lines = ["", "   "] + lines + ["\t"]
        elif op == "array":
            lines.append('["a"]')
        elif op == "string":
            lines.append('"just a string"')
        elif op == "trailing":
            lines[0] += " garbage"
        elif op == "numbers":
            lines.append('{"prompt": "x", "n": ' + "1" * 5000 + "}")
        elif op == "bom":
            lines[0] = "\ufeff" + lines[0]
        elif op == "empty_obj":
            lines.append("{}")
        else:
            lines.append('{"prompt": NaN}')
        return ".jsonl", (line_end.join(lines) + line_end).encode(), op
    # kind 6: a valid file with a few random unicode code points sprinkled in strings (must be accepted)
    for x in rows:
        if "prompt" in x:
            x["prompt"] += "".join(chr(rng.choice([0x85, 0x2028, 0x1F600, 0x0301, 0xFEFF, 0xE000, 0x7F]))
                                   for _ in range(3))
    text = line_end.join(json.dumps(x, ensure_ascii=rng.random() < 0.5) for x in rows) + line_end
    return ".jsonl", text.encode(), "valid with unicode"


class _StubGen:
    """Stands in for the model: the reader and the output path are what is fuzzed, not generation."""

    use_medusa = False
    fallback_reason = None

    def run(self, prompts, on_completion=None):
        from accel.runtime.generate import Completion

        out = []
        for p in prompts:
            c = Completion(p.id, "ok", 1, 1)
            out.append(c)
            if on_completion:
                on_completion(c)
        return out


@pytest.fixture
def stub_model(monkeypatch):
    from accel.runtime import generate as g

    monkeypatch.setattr(g.Generator, "load", classmethod(lambda cls, *a, **k: _StubGen()))


def _model_dir(tmp_path):
    """A folder that passes as a model with a 512-token context: the prompt limits scale to it."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"max_position_embeddings": CONTEXT}))
    return d


@pytest.mark.parametrize("seed", range(N_PROMPT))
def test_fuzz_prompt_file(seed, tmp_path, stub_model):
    suffix, data, what = _prompt_case(seed)
    path = tmp_path / f"p{suffix}"
    path.write_bytes(data)
    # the reader itself, with Python-level peak memory measured
    before = _sha(path)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        prompts = read_prompt_file(str(path), context_length=CONTEXT)
        assert prompts
    except AccelError as e:
        assert "\n" not in str(e), str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 <= MAX_S and peak <= MAX_MB * 2**20 and _sha(path) == before
    # and the whole command (stubbed model), half the time with --output
    args = ["generate", "-p", path, "-m", _model_dir(tmp_path), "-n", 1]
    if seed % 2:
        args += ["-o", tmp_path / "out.jsonl"]
    _check_cli(args, path)


@pytest.mark.parametrize("suffix,data,ok", [
    (".jsonl", ('{"id": "a", "prompt": "x\u2028y\u0085z"}\r\n' + '{"id": "b", "prompt": "w"}\n').encode(), True),
    (".txt", b"line\r\nline\r\n", True),
])
def test_fuzz_known_valid_inputs_accepted(tmp_path, stub_model, suffix, data, ok):
    path = tmp_path / f"p{suffix}"
    path.write_bytes(data)
    _check_cli(["generate", "-p", path, "-m", _model_dir(tmp_path), "-n", 1], path, expect_ok=ok)


# ----------------------------------------------------------------------- a sample in a subprocess

def _subprocess_cases(base):
    cases = []
    for seed in (0, 2):  # truncated file, a hostile value inside a metadata JSON field
        data, what = _pack_case(seed, base)
        cases.append(("p.safetensors", data, ["pack", "inspect"], what))
    for seed in (4, 7):  # a huge JSONL line, a .txt variant
        suffix, data, what = _prompt_case(seed)
        cases.append((f"p{suffix}", data, ["generate", "-n", "1", "-p"], what))
    return cases  # 4 processes: each pays ~4 s of interpreter + torch start-up on the CI CPU


def test_fuzz_sample_in_subprocess(base_pack, tmp_path):
    """The real entry point, in its own process: exit code, stderr, and that process's own peak memory
    (written at exit by the child: RUSAGE_CHILDREN would also count other tests' subprocesses)."""
    # VmHWM (peak RSS of this address space, in kB), not ru_maxrss: Linux keeps ru_maxrss across execve, so
    # a child of a large pytest process would report its parent's peak
    code = ("import atexit, os, sys; "
            "atexit.register(lambda: open(os.environ['FUZZ_RSS'], 'w').write(next("
            "l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))); "
            "from accel.cli import main; sys.argv[0] = 'accel'; main()")
    model = _model_dir(tmp_path)
    rss_file = tmp_path / "rss"
    for i, (name, data, args, what) in enumerate(_subprocess_cases(base_pack)):
        path = tmp_path / f"{i}-{name}"
        path.write_bytes(data)
        before = _sha(path)
        cmd = [sys.executable, "-c", code, *args, str(path)]
        if args[0] == "generate":
            cmd += ["-m", str(model)]  # a folder without weights: the reader must answer (or fail) first
        # cwd: `python -c` puts the working directory on sys.path, and the repo root's kernels/ would shadow
        # Hugging Face's `kernels` package that transformers imports
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                           env={**os.environ, "FUZZ_RSS": str(rss_file)})
        assert "Traceback" not in r.stderr, (what, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if r.returncode != 0:
            assert len(lines) == 1 and lines[0].startswith("error:"), (what, r.stderr)
        assert _sha(path) == before
        peak_mb = int(rss_file.read_text()) / 1024
        # ~250 MB is the interpreter with torch imported (measured); the work itself gets MAX_MB on top
        assert peak_mb <= 300 + MAX_MB, (what, peak_mb)
