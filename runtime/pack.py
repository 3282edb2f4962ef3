"""The acceleration pack: one ``.safetensors`` file with everything accel learned about a model.

Tensors are the Medusa heads under vLLM's names (``blocks.{i}.layers.{j}.weight|bias``,
``lm_heads.{i}.weight``). ``__metadata__`` is safetensors' flat string->string map; nested values are
JSON strings:

=======================  =====================================================================
``accel.format_version`` ``"1"``
``accel.base_model``     the model name the pack was built for
``accel.fingerprint``    ``runtime.models.model_fingerprint`` of those weights
``accel.patterns``       MInference's best-pattern layout: a list, one dict per layer,
                         ``{"<head>": [pattern_name, size_1, size_2, score]}``
``accel.patterns_info``  our own fields: searched length, scaling rule, budget, recall stats
``accel.medusa``         heads config (num_heads, num_layers, projection, sizes), tree, accuracies
``accel.provenance``     accel version, command lines, dates, data settings, metrics
=======================  =====================================================================

A pack may hold patterns only, heads only, or both. Writes are atomic (temporary file in the same
folder, fsync, rename), so a crash never leaves a half-written pack. Loading validates everything and
raises ``PackError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import PackError
from .files import atomic_write

__all__ = ["FORMAT_VERSION", "Pack", "load_pack", "save_pack", "validate_for_model",
           "expected_head_shapes", "export_minference"]

FORMAT_VERSION = "1"
PATTERN_NAMES = ("vertical_and_slash", "stream_llm", "block_sparse", "dense")
_K = "accel."


@dataclass
class Pack:
    base_model: str
    fingerprint: str
    patterns: list[dict] | None = None  # one dict per layer: {"<head>": [name, size_1, size_2, score]}
    patterns_info: dict = field(default_factory=dict)
    medusa: dict | None = None  # MedusaConfig.to_dict() + {"tree": [...], "rank_acceptance": [...]}
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def has_patterns(self) -> bool:
        return bool(self.patterns)

    @property
    def has_heads(self) -> bool:
        return self.medusa is not None and bool(self.heads)

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
    if pack.medusa is not None:
        meta[_K + "medusa"] = json.dumps(pack.medusa, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in pack.heads.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), what="pack",
                        create_parents=True)


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
    if version != FORMAT_VERSION:
        raise PackError(f"{path} has pack format version {version!r}; this accel reads version "
                        f"{FORMAT_VERSION!r}: upgrade accel or rebuild the pack")

    def js(key, default):
        raw = meta.get(_K + key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise PackError(f"{path}: metadata field accel.{key} is not valid JSON") from None

    pack = Pack(
        base_model=meta.get(_K + "base_model", ""),
        fingerprint=meta.get(_K + "fingerprint", ""),
        patterns=js("patterns", None),
        patterns_info=js("patterns_info", {}),
        medusa=js("medusa", None),
        heads=tensors,
        provenance=js("provenance", {}),
    )
    _check_structure(pack, str(path))
    return pack


def expected_head_shapes(medusa: dict) -> dict[str, tuple[int, ...]]:
    H, V = int(medusa["hidden_size"]), int(medusa["vocab_size"])
    shapes = {}
    for i in range(int(medusa["num_heads"])):
        for j in range(int(medusa["num_layers"])):
            shapes[f"blocks.{i}.layers.{j}.weight"] = (H, H)
            shapes[f"blocks.{i}.layers.{j}.bias"] = (H,)
        if medusa.get("projection", "shared") == "own":
            shapes[f"lm_heads.{i}.weight"] = (V, H)
    return shapes


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
                if not (isinstance(v, list) and 3 <= len(v) <= 4 and v[0] in PATTERN_NAMES):
                    raise PackError(f"{where}: layer {li} head {h}: bad pattern entry {v!r} "
                                    f"(expected [name, size_1, size_2, score], name in {PATTERN_NAMES})")
    if pack.medusa is None:
        if pack.heads:
            raise PackError(f"{where}: the pack has head tensors but no accel.medusa config")
        return
    try:
        want = expected_head_shapes(pack.medusa)
    except (KeyError, TypeError, ValueError):
        raise PackError(f"{where}: accel.medusa lacks num_heads/num_layers/hidden_size/vocab_size") from None
    missing = sorted(set(want) - set(pack.heads))
    extra = sorted(set(pack.heads) - set(want))
    if missing:
        raise PackError(f"{where}: missing head tensors, e.g. {missing[0]} ({len(missing)} in all)")
    if extra:
        raise PackError(f"{where}: unexpected tensors, e.g. {extra[0]} ({len(extra)} in all)")
    for k, shape in want.items():
        if tuple(pack.heads[k].shape) != shape:
            raise PackError(f"{where}: tensor {k} has shape {tuple(pack.heads[k].shape)}, expected {shape}")


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
    if pack.medusa is not None:
        H, V = cfg.hidden_size, cfg.vocab_size
        if (int(pack.medusa["hidden_size"]), int(pack.medusa["vocab_size"])) != (H, V):
            raise PackError(f"{where}: heads are for hidden {pack.medusa['hidden_size']} / vocab "
                            f"{pack.medusa['vocab_size']}; the model has {H} / {V}")


def export_minference(pack: Pack, path: str | os.PathLike, *, inputs=()) -> Path:
    """Write the patterns as MInference's best-pattern JSON (what MInference, vLLM and SGLang load).

    ``inputs``: files the output must not overwrite (the pack it was read from)."""
    if not pack.patterns:
        raise PackError("the pack holds no patterns to export: run `accel search-patterns` first")
    out = [{h: [v[0], int(v[1]), int(v[2]), float(v[3]) if len(v) > 3 else 0.0]
            for h, v in layer.items()} for layer in pack.patterns]
    return atomic_write(path, json.dumps(out), inputs=inputs, what="--output")
