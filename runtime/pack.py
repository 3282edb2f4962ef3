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
import math
import os
import warnings
from pathlib import Path

import torch

from ..kernels.patterns import PatternError, validate_entry
from .errors import PackError
from .files import atomic_write

__all__ = ["FORMAT_VERSION", "READS", "Pack", "load_pack", "save_pack", "validate_for_model",
           "expected_head_shapes", "export_minference", "check_medusa_config", "check_tree",
           "check_head_tensors"]

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
            names = list(f.keys())
            if len(names) > MAX_TENSORS:  # bound before reading: no accel pack holds more
                raise PackError(f"{path}: {len(names)} tensors; an accel pack holds at most {MAX_TENSORS}")
            tensors = {k: f.get_tensor(k) for k in names}
    except PackError:
        raise
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
        if len(raw) > MAX_FIELD_CHARS:  # bound before parsing: JSON objects take ~10x their text in memory
            raise PackError(f"{path}: metadata field accel.{key} is {len(raw) / 2**20:.0f} MiB of text; "
                            f"an accel pack's fields are at most {MAX_FIELD_CHARS // 2**20} MiB")
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise PackError(f"{path}: metadata field accel.{key} is not valid JSON") from None
        except (RecursionError, ValueError):  # nesting / integer digits beyond what Python converts
            raise PackError(f"{path}: metadata field accel.{key} is not usable JSON (nested too deeply "
                            "or a number too long)") from None

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
    check_pack_fields(pack, where)  # bounds and types first: nothing below may size anything from a bad field
    if pack.patterns is not None:
        if not isinstance(pack.patterns, list) or not all(isinstance(d, dict) for d in pack.patterns):
            raise PackError(f"{where}: accel.patterns must be a list with one dict per layer")
        for li, layer in enumerate(pack.patterns):
            if not layer or set(layer) != {str(h) for h in range(len(layer))}:
                raise PackError(f"{where}: layer {li} of accel.patterns must name heads 0..H-1")
            for h, v in layer.items():
                if not (isinstance(v, list) and 3 <= len(v) <= 4):
                    raise PackError(f"{where}: layer {li} head {h}: bad pattern entry {_short(v)} "
                                    "(expected [name, size_1, size_2, score])")
                check_pattern_entry(v, f"{where}: accel.patterns layer {li} head {h}")  # JSON types, bounds
                try:
                    validate_entry(v)   # the pattern registry's names and per-pattern bounds
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
    check_head_tensors(pack.tensors, where)


# ---------------------------------------------------------------------------------------------------
# Bounds and types of every pack field (issue 13). Self-contained so it can move with the pack format:
# a pack is hostile input, so each field is type-checked and bounded *before* anything is sized or
# looped from it (``num_heads = 1e9`` once made loading allocate without end). Messages name the
# pack and the field. ``check_medusa_config`` and ``check_tree`` serve ``--tree`` files too.

MEDUSA_BOUNDS = {"num_heads": (1, 64), "num_layers": (0, 8), "hidden_size": (1, 2**20), "vocab_size": (1, 2**22)}
MAX_TREE_NODES = 1024
MAX_TREE_RANK = 1024  # a top-k rank; more candidates than this per head is never useful
HEAD_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_FIELD_CHARS = 8 * 2**20  # one metadata field; 128 layers x 128 heads of patterns is ~0.7 MB
MAX_TENSORS = 2048  # 64 heads x (8 ResBlocks x 2 + 1 projection) = 1088 at most
MAX_LAYERS, MAX_HEADS = 1024, 1024  # of a pattern table
MAX_PATTERN_SIZE = 2**24  # tokens / columns / diagonals / blocks: 16M, beyond any context


def _short(v, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounded_int(v, lo: int, hi: int, what: str) -> int:
    if not _is_int(v):
        raise PackError(f"{what} must be an integer, got {_short(v)}")
    if not lo <= v <= hi:
        raise PackError(f"{what} = {v} is out of range ({lo}..{hi})")
    return v


def check_tree(tree, where: str, max_depth: int | None = None) -> list[tuple[int, ...]]:
    """A Medusa tree: a non-empty, prefix-closed list of paths of top-k ranks (ints, not floats or bools),
    at most ``MAX_TREE_NODES`` paths, each rank < ``MAX_TREE_RANK``, depth <= ``max_depth`` (num_heads)."""
    if not isinstance(tree, list) or not tree:
        raise PackError(f"{where}: the tree must be a non-empty JSON list of paths like [[0], [0, 0], [1]]")
    if len(tree) > MAX_TREE_NODES:
        raise PackError(f"{where}: the tree has {len(tree)} nodes; at most {MAX_TREE_NODES} are allowed")
    depth_cap = max_depth if max_depth is not None else MEDUSA_BOUNDS["num_heads"][1]
    paths = []
    for path in tree:
        if not isinstance(path, (list, tuple)) or not path:
            raise PackError(f"{where}: tree node {_short(path)} is not a non-empty list of top-k ranks")
        if len(path) > depth_cap:
            raise PackError(f"{where}: tree node {_short(path)} is {len(path)} deep; the heads predict "
                            f"only {depth_cap} tokens ahead")
        for r in path:
            if not _is_int(r) or not 0 <= r < MAX_TREE_RANK:
                raise PackError(f"{where}: tree node {_short(path)}: ranks must be integers in "
                                f"0..{MAX_TREE_RANK - 1}, got {_short(r)}")
        paths.append(tuple(path))
    known = set(paths)
    for p in paths:
        if len(p) > 1 and p[:-1] not in known:
            raise PackError(f"{where}: tree node {list(p)} has no parent {list(p[:-1])}: trees must be prefix-closed")
    return paths


def check_medusa_config(cfg, where: str, field: str = "accel.drafter") -> None:
    """The Medusa drafter's config (``field``: ``accel.drafter``, or ``{field}`` in a format-1 pack): a
    JSON object with bounded integer sizes, a known projection, a bounded tree."""
    if not isinstance(cfg, dict):
        raise PackError(f"{where}: {field} must be a JSON object, got {type(cfg).__name__}")
    for key, (lo, hi) in MEDUSA_BOUNDS.items():
        if key not in cfg:
            raise PackError(f"{where}: {field} lacks {key} (needs num_heads, num_layers, hidden_size, vocab_size)")
        _bounded_int(cfg[key], lo, hi, f"{where}: {field}.{key}")
    if cfg.get("projection", "shared") not in ("shared", "own"):
        raise PackError(f"{where}: {field}.projection must be \"shared\" or \"own\", got {_short(cfg['projection'])}")
    if cfg.get("tree") is not None:
        check_tree(cfg["tree"], f"{where}: {field}.tree", max_depth=cfg["num_heads"])
    acc = cfg.get("rank_acceptance")
    if acc is not None:
        ok = (isinstance(acc, list) and len(acc) <= cfg["num_heads"]
              and all(isinstance(row, list) and len(row) <= MAX_TREE_RANK
                      and all(_is_number(x) and math.isfinite(x) for x in row) for row in acc))
        if not ok:
            raise PackError(f"{where}: {field}.rank_acceptance must be one list of finite numbers per head")


def check_pattern_entry(v: list, what: str) -> None:
    """[name, size_1, size_2(, score)]: sizes integers in 0..MAX_PATTERN_SIZE, score a finite number."""
    for i, label in ((1, "size_1"), (2, "size_2")):
        _bounded_int(v[i], 0, MAX_PATTERN_SIZE, f"{what}: {label}")
    if len(v) > 3 and not (_is_number(v[3]) and math.isfinite(v[3])):
        raise PackError(f"{what}: score must be a finite number, got {_short(v[3])}")


def check_pack_fields(pack: Pack, where: str) -> None:
    """Types and bounds of every metadata field, before anything is derived from them."""
    for name, value in (("base_model", pack.base_model), ("fingerprint", pack.fingerprint)):
        if not isinstance(value, str) or len(value) > 1024:
            raise PackError(f"{where}: accel.{name} must be a string of at most 1024 characters")
    if pack.patterns is not None:
        if not isinstance(pack.patterns, list) or len(pack.patterns) > MAX_LAYERS:
            raise PackError(f"{where}: accel.patterns must be a list of at most {MAX_LAYERS} layers")
        if any(isinstance(d, dict) and len(d) > MAX_HEADS for d in pack.patterns):
            raise PackError(f"{where}: accel.patterns holds a layer with more than {MAX_HEADS} heads")
    for name, value in (("patterns_info", pack.patterns_info), ("provenance", pack.provenance)):
        if not isinstance(value, dict):
            raise PackError(f"{where}: accel.{name} must be a JSON object, got {type(value).__name__}")
    info = pack.patterns_info
    if "seq_len" in info:
        _bounded_int(info["seq_len"], 1, MAX_PATTERN_SIZE, f"{where}: accel.patterns_info.seq_len")
    if info.get("dense_tail") is not None:
        _bounded_int(info["dense_tail"], 0, MAX_PATTERN_SIZE, f"{where}: accel.patterns_info.dense_tail")
    if "scaling" in info:
        from ..kernels.scaling import SCALING_RULES

        if info["scaling"] not in SCALING_RULES:
            raise PackError(f"{where}: accel.patterns_info.scaling must be one of {SCALING_RULES}, "
                            f"got {_short(info['scaling'])}")
    commands = pack.provenance.get("commands")
    if commands is not None and not (isinstance(commands, dict)
                                     and all(isinstance(v, str) for v in commands.values())):
        raise PackError(f"{where}: accel.provenance.commands must map names to command lines (strings)")
    if pack.medusa is not None:
        check_medusa_config(pack.medusa, where, "accel.medusa" if pack.format_version == "1" else "accel.drafter")


def check_head_tensors(heads: dict, where: str) -> None:
    """Head weights must be floating point (float16/bfloat16/float32) and finite: int or bool weights
    load without error but silently ruin acceptance, and NaN/Inf would poison every draft."""
    for k, t in heads.items():
        if t.dtype not in HEAD_DTYPES:
            raise PackError(f"{where}: tensor {k} has dtype {str(t.dtype).replace('torch.', '')}; head "
                            "weights must be float16, bfloat16 or float32")
        if not bool(torch.isfinite(t).all()):
            raise PackError(f"{where}: tensor {k} holds NaN or Inf values: the heads are broken; retrain them")


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


def export_minference(pack: Pack, path: str | os.PathLike, *, inputs=()) -> Path:
    """Write the patterns as MInference's best-pattern JSON (what MInference, vLLM and SGLang load).

    ``inputs``: files the output must not overwrite (the pack it was read from)."""
    if not pack.patterns:
        raise PackError("the pack holds no patterns to export: run `accel search-patterns` first")
    out = [{h: [v[0], int(v[1]), int(v[2]), float(v[3]) if len(v) > 3 else 0.0]
            for h, v in layer.items()} for layer in pack.patterns]
    return atomic_write(path, json.dumps(out), inputs=inputs, what="--output")
