"""The acceleration pack: one ``.safetensors`` file with everything accel learned about a model.

Tensors are the drafter's (Medusa: vLLM's names ``blocks.{i}.layers.{j}.weight|bias``,
``lm_heads.{i}.weight``). ``__metadata__`` is safetensors' flat string->string map; nested values are
JSON strings. Format 2:

=========================  ===================================================================
``accel.format_version``   ``"2"``
``accel.base_model``       the model name the pack was built for
``accel.fingerprint``      ``runtime.models.model_fingerprint`` of those weights
``accel.patterns``         MInference's best-pattern layout: a list, one dict per layer,
                           ``{"<head>": [pattern_name, size_1, size_2, score]}``
``accel.patterns_info``    our own fields: searched length, scaling rule, budget, recall stats,
                           optionally ``sparse_min_len`` measured for this model (runtime.prefill)
``accel.drafter.kind``     the drafter (``runtime.drafters``): ``"medusa"``
``accel.drafter``          its config, checked by that drafter's ``validate_config`` (Medusa: heads
                           config, tree, rank acceptance)
``accel.provenance``       accel version, command lines, dates, data settings, metrics
=========================  ===================================================================

Format 1 (still read; never written) had ``accel.medusa`` where format 2 has the two drafter keys.
A pack may hold patterns only, a drafter only, or both. Writes are atomic (temporary file in the same
folder, fsync, rename), so a crash never leaves a half-written pack. Loading validates everything and
raises ``PackError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..kernels.patterns import PatternError, validate_entry
from .errors import PackError

__all__ = ["FORMAT_VERSION", "READS", "Pack", "load_pack", "save_pack", "validate_for_model",
           "expected_head_shapes", "export_minference"]

FORMAT_VERSION = "2"
READS = ("1", "2")
_K = "accel."


class Pack:
    """The pack in memory. ``drafter``: the drafter's config dict (kind ``drafter_kind``), ``tensors``
    its weights. ``medusa=`` / ``heads=`` are accepted as the format-1 names of the same fields."""

    def __init__(self, base_model: str, fingerprint: str, patterns: list[dict] | None = None,
                 patterns_info: dict | None = None, drafter: dict | None = None,
                 tensors: dict[str, torch.Tensor] | None = None, provenance: dict | None = None, *,
                 drafter_kind: str | None = None, medusa: dict | None = None,
                 heads: dict[str, torch.Tensor] | None = None):
        if medusa is not None:
            drafter, drafter_kind = medusa, drafter_kind or "medusa"
        self.base_model, self.fingerprint = base_model, fingerprint
        self.patterns = patterns  # one dict per layer: {"<head>": [name, size_1, size_2, score]}
        self.patterns_info = patterns_info or {}
        self.drafter = drafter
        self.drafter_kind = drafter_kind or ("medusa" if drafter is not None else None)
        self.tensors = dict(tensors if tensors is not None else heads or {})
        self.provenance = provenance or {}
        self.format_version = FORMAT_VERSION  # what load_pack read (older packs are upgraded on save)

    # format-1 names, still used by callers that only know Medusa
    @property
    def medusa(self) -> dict | None:
        return self.drafter if self.drafter_kind == "medusa" else None

    @property
    def heads(self) -> dict[str, torch.Tensor]:
        return self.tensors

    @property
    def has_patterns(self) -> bool:
        return bool(self.patterns)

    @property
    def has_drafter(self) -> bool:
        return self.drafter is not None and bool(self.tensors)

    has_heads = has_drafter

    def layer_patterns(self, layer: int):
        """Per-head ``HeadPattern`` list for one layer (ordered by head index)."""
        from ..kernels.patterns import HeadPattern

        entry = self.patterns[layer]
        return [HeadPattern(*_unpack(entry[str(h)])) for h in range(len(entry))]


def _unpack(v):
    name, s1, s2, score = (list(v) + [0, 0, 0.0])[:4]
    return str(name), int(s1), int(s2), float(score)


def save_pack(pack: Pack, path: str | os.PathLike) -> Path:
    """Write ``pack`` atomically: a temporary file beside ``path``, fsync, then ``os.replace``."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_structure(pack, str(path))
    meta = {
        _K + "format_version": FORMAT_VERSION,
        _K + "base_model": pack.base_model,
        _K + "fingerprint": pack.fingerprint,
        _K + "provenance": json.dumps(pack.provenance, sort_keys=True, default=str),
    }
    if pack.patterns is not None:
        meta[_K + "patterns"] = json.dumps(pack.patterns)
        meta[_K + "patterns_info"] = json.dumps(pack.patterns_info, sort_keys=True, default=str)
    if pack.drafter is not None:
        meta[_K + "drafter.kind"] = pack.drafter_kind
        meta[_K + "drafter"] = json.dumps(pack.drafter, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in pack.tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_pack(path: str | os.PathLike) -> Pack:
    """Read and structurally validate a pack (no model needed); raise PackError on any problem."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PackError(f"pack not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise PackError(f"{path} is not a readable safetensors pack (truncated or corrupted?): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    version = meta.get(_K + "format_version")
    if version is None:
        raise PackError(f"{path} is a safetensors file but not an accel pack (no accel.format_version)")
    if version not in READS:
        raise PackError(f"{path} has pack format version {version!r}; this accel reads versions "
                        f"{', '.join(READS)}: upgrade accel or rebuild the pack")

    def js(key, default):
        raw = meta.get(_K + key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise PackError(f"{path}: metadata field accel.{key} is not valid JSON") from None

    if version == "1":  # format 1: the only drafter was Medusa, under accel.medusa
        kind, drafter = ("medusa" if _K + "medusa" in meta else None), js("medusa", None)
    else:
        kind, drafter = meta.get(_K + "drafter.kind"), js("drafter", None)
    pack = Pack(
        base_model=meta.get(_K + "base_model", ""),
        fingerprint=meta.get(_K + "fingerprint", ""),
        patterns=js("patterns", None),
        patterns_info=js("patterns_info", {}),
        drafter=drafter,
        tensors=tensors,
        provenance=js("provenance", {}),
        drafter_kind=kind,
    )
    _check_structure(pack, str(path))
    pack.format_version = version
    return pack


def expected_head_shapes(medusa: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Medusa config (kept for callers; see MedusaDrafter.expected_tensors)."""
    from .drafters import drafter_class

    return drafter_class("medusa").expected_tensors(medusa)


def _check_structure(pack: Pack, where: str) -> None:
    if not pack.fingerprint:
        raise PackError(f"{where}: the pack has no model fingerprint")
    if pack.patterns is not None:
        if not isinstance(pack.patterns, list) or not all(isinstance(d, dict) for d in pack.patterns):
            raise PackError(f"{where}: accel.patterns must be a list with one dict per layer")
        for li, layer in enumerate(pack.patterns):
            if not layer or set(layer) != {str(h) for h in range(len(layer))}:
                raise PackError(f"{where}: layer {li} of accel.patterns must name heads 0..H-1")
            for h, v in layer.items():
                try:
                    validate_entry(v)   # the pattern registry's name and size bounds
                except PatternError as e:
                    raise PackError(f"{where}: layer {li} head {h}: {e}") from None
    if pack.drafter is None:
        if pack.tensors:
            raise PackError(f"{where}: the pack has head tensors but no drafter config (accel.drafter)")
        return
    from .drafters import drafter_class

    try:
        # the drafter validates its config with bounds before any shape is computed from it
        want = drafter_class(pack.drafter_kind).expected_tensors(pack.drafter)
    except ValueError as e:
        raise PackError(f"{where}: {e}") from None
    missing = sorted(set(want) - set(pack.tensors))
    extra = sorted(set(pack.tensors) - set(want))
    if missing:
        raise PackError(f"{where}: missing head tensors, e.g. {missing[0]} ({len(missing)} in all)")
    if extra:
        raise PackError(f"{where}: unexpected tensors, e.g. {extra[0]} ({len(extra)} in all)")
    for k, shape in want.items():
        if tuple(pack.tensors[k].shape) != shape:
            raise PackError(f"{where}: tensor {k} has shape {tuple(pack.tensors[k].shape)}, expected {shape}")


def validate_for_model(pack: Pack, model, fingerprint: str, *, force: bool = False,
                       where: str = "pack") -> None:
    """Refuse a pack built for other weights (``force`` downgrades that to a warning) and check that
    its patterns and heads fit the model's shapes (never overridable: they would crash or mislead)."""
    if pack.fingerprint != fingerprint:
        msg = (f"{where} was built for {pack.base_model or 'another model'} (fingerprint "
               f"{pack.fingerprint}), not this model ({fingerprint})")
        if not force:
            raise PackError(msg + ": rebuild it for this model, or pass --force to use it anyway")
        warnings.warn(msg + "; using it because of --force", stacklevel=2)
    cfg = model.config
    if pack.patterns is not None:
        L, Hq = cfg.num_hidden_layers, cfg.num_attention_heads
        if len(pack.patterns) != L or any(len(d) != Hq for d in pack.patterns):
            raise PackError(f"{where}: patterns are for {len(pack.patterns)} layers x "
                            f"{len(pack.patterns[0]) if pack.patterns else 0} heads; the model has {L} x {Hq}")
    if pack.drafter is not None:
        H, V = cfg.hidden_size, cfg.vocab_size
        if (int(pack.drafter["hidden_size"]), int(pack.drafter["vocab_size"])) != (H, V):
            raise PackError(f"{where}: the {pack.drafter_kind} drafter is for hidden {pack.drafter['hidden_size']} / "
                            f"vocab {pack.drafter['vocab_size']}; the model has {H} / {V}")


def export_minference(pack: Pack, path: str | os.PathLike) -> Path:
    """Write the patterns as MInference's best-pattern JSON (what MInference, vLLM and SGLang load)."""
    if not pack.patterns:
        raise PackError("the pack holds no patterns to export: run `accel search-patterns` first")
    out = [{h: [v[0], int(v[1]), int(v[2]), float(v[3]) if len(v) > 3 else 0.0]
            for h, v in layer.items()} for layer in pack.patterns]
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    with os.fdopen(fd, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return path
