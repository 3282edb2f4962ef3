"""Training data for Medusa heads: prompt sets, data files, and self-distillation.

Design
- Everything ends up as ``Example(ids, mask)``: token ids plus a 0/1 mask marking the tokens the heads
  should learn to *predict* (a head's loss at position t counts only if its target token is masked in).
  For self-distilled data the mask covers the model's continuation, not the prompt; for plain text it
  covers everything; for chat conversations it covers the assistant turns.
- Self-distillation (the default): the base model answers prompts (chat template applied) with batched
  greedy ``generate``; heads then learn the model's *own* continuations, which is what they will see at
  decode time. Results are cached on disk under a key built from the model fingerprint, the tokenizer,
  the prompt set and the generation settings, so a rerun does not regenerate; a partial cache (killed
  run) is resumed batch by batch.
- One of each (issue 11): prompts are encoded by the runtime's ``encode_prompt``, generation stops at
  the runtime's ``eos_ids``, the default cache fingerprint is the runtime's ``model_fingerprint``, and
  generation runs through ``runtime.decode`` (``generate_plain`` / ``generate_transformers``).
- Pre-tokenised input (``list[int]`` prompts / sequences) works without a tokenizer, which keeps the
  tests download-free.
- Bad input raises ``HeadsDataError`` (a ``ValueError``, and an ``AccelError`` when that exists) whose
  one-line message says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..runtime.decode import generate_plain, generate_transformers
from ..runtime.files import atomic_write
from ..runtime.models import context_length, eos_ids, model_fingerprint
from ..runtime.prompts import Prompt, encode_prompt

try:  # the lead's user-facing error base; the CLI prints its message as one line
    from ..runtime.errors import AccelError as _ErrorBase
except ImportError:  # pragma: no cover - only before the runtime package grows errors.py
    _ErrorBase = ValueError

__all__ = ["Example", "HeadsError", "HeadsDataError", "load_builtin_prompts", "load_prompt_file",
           "load_data_file", "to_examples", "self_distill", "default_cache_dir"]

_CACHE_VERSION = 1  # bump when the cache format or generation recipe changes


class HeadsError(_ErrorBase, ValueError):
    """A Medusa-training error the user can fix; ``str(err)`` is one line saying how."""


class HeadsDataError(HeadsError):
    """Empty, malformed or unusable training data / prompt files."""


@dataclass
class Example:
    """One training sequence: ``ids`` (token ids) and ``mask`` (1 = a token the heads learn to predict)."""

    ids: list[int]
    mask: list[int] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        self.ids = [int(t) for t in self.ids]
        if self.mask is None:
            self.mask = [1] * len(self.ids)
        if len(self.mask) != len(self.ids):
            raise HeadsDataError(f"example mask has {len(self.mask)} entries for {len(self.ids)} tokens; "
                                 "pass one mask entry per token")


def default_cache_dir() -> Path:
    """``$ACCEL_CACHE_DIR/distill`` or ``~/.cache/accel/distill``."""
    base = os.environ.get("ACCEL_CACHE_DIR")
    return Path(base) / "distill" if base else Path.home() / ".cache" / "accel" / "distill"


# ----------------------------------------------------------------------------- prompt and data files

def _read_jsonl(path: Path, what: str) -> list[tuple[int, Any]]:
    path = Path(path)
    if not path.is_file():
        raise HeadsDataError(f"{what} {path} does not exist; pass an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HeadsDataError(f"{what} {path} is not UTF-8 text; re-save it as UTF-8") from None
    rows = []
    # "\n" only: str.splitlines() would also cut at U+2028/U+0085, which are legal inside JSON strings
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise HeadsDataError(f"{path}:{n}: not valid JSON ({e.msg}); write one JSON object per line") from None
        except (RecursionError, ValueError):  # nested too deeply / a number with thousands of digits
            raise HeadsDataError(f"{path}:{n}: not usable JSON (nested too deeply or a number too long)") from None
    if not rows:
        raise HeadsDataError(f"{what} {path} is empty; give at least one line")
    return rows


def _check_messages(msgs: Any, where: str) -> list[dict]:
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs):
        raise HeadsDataError(f"{where}: 'messages' must be a non-empty list of "
                             '{"role": ..., "content": "..."} objects')
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _parse_prompts(rows: list[tuple[int, Any]], path: str) -> list[dict]:
    out, seen = [], set()
    for n, row in rows:
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise HeadsDataError(f"{where}: expected a JSON object with 'prompt' or 'messages'")
        if "messages" in row:
            msgs = _check_messages(row["messages"], where)
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            msgs = [{"role": "user", "content": row["prompt"]}]
        else:
            raise HeadsDataError(f'{where}: each line needs "prompt": "<text>" or "messages": [...]')
        pid = str(row.get("id", f"line-{n}"))
        if pid in seen:
            raise HeadsDataError(f"{where}: duplicate id {pid!r}; give every prompt a unique id")
        seen.add(pid)
        out.append({"id": pid, "messages": msgs})
    return out


def load_builtin_prompts() -> list[dict]:
    """The shipped prompt set (``heads/prompts.jsonl``): ``[{"id", "messages"}, ...]``."""
    path = resources.files("accel.heads") / "prompts.jsonl"
    with resources.as_file(path) as p:
        return _parse_prompts(_read_jsonl(Path(p), "built-in prompt file"), "prompts.jsonl")


def load_prompt_file(path: str | os.PathLike) -> list[dict]:
    """A JSONL prompt file, one ``{"id", "prompt"}`` or ``{"id", "messages"}`` per line."""
    return _parse_prompts(_read_jsonl(Path(path), "prompt file"), str(path))


def load_data_file(path: str | os.PathLike) -> list[str | dict]:
    """Training data as plain text or JSONL.

    JSONL lines are ``{"text": "..."}`` (returned as ``str``) or ``{"messages": [...]}`` (returned as
    ``{"messages": [...]}``). Anything whose first non-blank character is not ``{`` is plain text and is
    returned as one string (the trainer cuts it into ``seq_len`` windows).
    """
    path = Path(path)
    if not path.is_file():
        raise HeadsDataError(f"data file {path} does not exist; pass an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HeadsDataError(f"data file {path} is not UTF-8 text; re-save it as UTF-8") from None
    if not text.strip():
        raise HeadsDataError(f"data file {path} is empty; give plain text or JSONL with 'text'/'messages'")
    if not text.lstrip().startswith("{"):
        return [text]
    out: list[str | dict] = []
    for n, row in _read_jsonl(path, "data file"):
        where = f"{path}:{n}"
        if isinstance(row, dict) and "messages" in row:
            out.append({"messages": _check_messages(row["messages"], where)})
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            if row["text"].strip():
                out.append(row["text"])
        else:
            raise HeadsDataError(f'{where}: each JSONL line needs "text": "..." or "messages": [...]')
    if not out:
        raise HeadsDataError(f"data file {path} has no non-empty texts; add some text")
    return out


# ----------------------------------------------------------------------------- tokenisation

def _chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    # no template (base model): a plain, stable transcript format
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _conversation_example(tokenizer, messages: list[dict]) -> Example:
    """Tokens of the whole conversation, mask = assistant turns.

    Each assistant turn's span is found by rendering the conversation up to the turn (with the generation
    prompt) and up to the end of the turn; if the template is not prefix-stable we fall back to training on
    every token (still useful, just less targeted)."""
    ids = _encode(tokenizer, _chat_text(tokenizer, messages, add_generation_prompt=False))
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _encode(tokenizer, _chat_text(tokenizer, messages[:i], add_generation_prompt=True))
        end = _encode(tokenizer, _chat_text(tokenizer, messages[: i + 1], add_generation_prompt=False))
        if ids[: len(start)] != start or ids[: len(end)] != end:
            return Example(ids)
        for t in range(len(start), len(end)):
            mask[t] = 1
    if not any(mask):  # no assistant turn: learn the whole transcript
        mask = [1] * len(ids)
    return Example(ids, mask)


def to_examples(tokenizer, items: Iterable[Any]) -> list[Example]:
    """Normalise training inputs to ``Example``s.

    Accepts ``Example``, ``list[int]`` (pre-tokenised, all trained on), ``str`` (tokenised with special
    tokens, e.g. BOS), ``{"messages": [...]}`` (chat template; assistant turns trained on), and
    ``{"input_ids": [...], "mask"|"loss_mask": [...]}``."""
    out = []
    for n, it in enumerate(items):
        if isinstance(it, Example):
            ex = it
        elif isinstance(it, (list, tuple)) or (isinstance(it, torch.Tensor) and it.dim() == 1):
            ex = Example(list(it))
        elif isinstance(it, dict) and "input_ids" in it:
            ex = Example(list(it["input_ids"]), it.get("mask", it.get("loss_mask")))
        elif isinstance(it, (str, dict)):
            if tokenizer is None:
                raise HeadsDataError(f"training item {n} is text but no tokenizer was given; "
                                     "pass the model's tokenizer or pre-tokenised id lists")
            if isinstance(it, str):
                ex = Example(list(tokenizer(it)["input_ids"]))
            elif "messages" in it:
                ex = _conversation_example(tokenizer, _check_messages(it["messages"], f"training item {n}"))
            elif isinstance(it.get("text"), str):
                ex = Example(list(tokenizer(it["text"])["input_ids"]))
            else:
                raise HeadsDataError(f"training item {n} is a dict without 'messages', 'text' or 'input_ids'")
        else:
            raise HeadsDataError(f"training item {n} has unsupported type {type(it).__name__}; "
                                 "pass strings, {'messages': [...]} dicts, or token id lists")
        if len(ex.ids) >= 2:
            out.append(ex)
    return out


# ----------------------------------------------------------------------------- self-distillation

def _prompt_ids(model, tokenizer, prompt: Any, key: str, max_new_tokens: int) -> list[int]:
    """A prompt's token ids: pre-tokenised ids as given; text and conversations through the runtime's
    ``encode_prompt`` (the ids ``accel generate`` feeds the model, so the heads learn what they will see;
    the oldest text is dropped if a prompt does not fit the context). A tokenizer without a chat
    template (base model) gets the plain transcript of ``_chat_text`` instead: the runtime refuses
    ``messages`` there, but distillation still needs the model to answer something."""
    if isinstance(prompt, dict) and "input_ids" in prompt:
        return [int(t) for t in prompt["input_ids"]]
    if isinstance(prompt, (list, tuple)) and (not prompt or isinstance(prompt[0], int)):
        return [int(t) for t in prompt]
    if tokenizer is None:
        raise HeadsDataError("prompts are text but no tokenizer was given; pass the model's tokenizer")
    if isinstance(prompt, dict):
        msgs = prompt["messages"] if "messages" in prompt else [{"role": "user", "content": str(prompt["prompt"])}]
    else:
        msgs = [{"role": "user", "content": str(prompt)}]
    if not getattr(tokenizer, "chat_template", None):
        return _encode(tokenizer, _chat_text(tokenizer, msgs, add_generation_prompt=True))
    return [int(t) for t in encode_prompt(tokenizer, Prompt(key, messages=msgs), context_length=context_length(model),
                                          max_new_tokens=max_new_tokens, truncate="left")]


def _generator(model, engine: str, pad_id: int):
    """A ``fn(batch, max_new_tokens, temperature, eos, seed) -> continuations`` over the runtime's two
    generators (``runtime.decode``: ``generate_plain`` on the compact engine, ``generate_transformers``).

    ``auto``: the compact engine (static KV cache + CUDA graphs) on CUDA for the families it supports,
    else transformers' ``generate`` -- unlike ``accel generate``, not on the CPU, where one batched
    transformers call is the cheaper way to answer hundreds of prompts. A compact-engine failure falls
    back to transformers (a long distillation run is never lost to the fast path)."""
    def hf(batch, max_new, temperature, eos, seed):
        return generate_transformers(model, batch, max_new, temperature, seed=seed, eos_ids=eos, pad_id=pad_id)

    if engine not in ("auto", "hf", "compact"):
        raise HeadsDataError(f"engine must be 'auto', 'hf' or 'compact', got {engine!r}")
    if engine == "hf":
        return hf
    from ..runtime.model import CompactLM, supports  # here: only the compact path needs it

    on_cuda = model.get_output_embeddings().weight.device.type == "cuda"
    if not supports(model) or (engine == "auto" and not on_cuda):
        if engine == "compact":
            raise HeadsDataError("the compact engine cannot run this model; use engine='hf'")
        return hf
    compact = CompactLM.from_hf(model)
    state = {"fallback": False}

    def fast(batch, max_new, temperature, eos, seed):
        if not state["fallback"]:
            try:
                res = generate_plain(compact, batch, max_new, temperature=temperature, seed=seed, eos_ids=eos)
                return [r.tokens for r in res]
            except Exception as e:  # noqa: BLE001 - never lose a distillation run to the fast path
                if engine == "compact":
                    raise
                import warnings
                warnings.warn(f"compact engine failed ({type(e).__name__}: {e}); using transformers generate")
                state["fallback"] = True
        return hf(batch, max_new, temperature, eos, seed)

    return fast


def self_distill(model, tokenizer, prompts: Sequence[Any], max_new_tokens: int = 256, batch_size: int = 64,
                 cache_dir: str | os.PathLike | None = None, fingerprint: str | None = None, *,
                 temperature: float = 0.0, seed: int = 0, progress: bool = False,
                 engine: str = "auto") -> list[Example]:
    """Let the base model answer ``prompts``; return ``Example(prompt + continuation, mask=continuation)``.

    ``prompts``: ``{"id", "messages"}`` dicts (chat template applied), plain strings (one user turn), or
    pre-tokenised ``list[int]`` (no tokenizer needed). Generation is greedy unless ``temperature > 0``.
    ``engine``: ``auto`` (compact CUDA-graph engine on CUDA for Llama-family models, else transformers),
    ``hf`` or ``compact``. Cached as JSONL under ``cache_dir`` (default ``~/.cache/accel/distill``) keyed by
    fingerprint + prompts (as token ids) + settings; a killed run resumes from its partial cache.
    """
    if not prompts:
        raise HeadsDataError("no prompts to self-distill; pass a non-empty prompt file or use the built-in set")
    if max_new_tokens < 1 or batch_size < 1:
        raise HeadsDataError("max_new_tokens and batch_size must be >= 1")
    keys = [str(p.get("id", i)) if isinstance(p, dict) else str(i) for i, p in enumerate(prompts)]
    if len(set(keys)) != len(keys):
        keys = [str(i) for i in range(len(prompts))]
    encoded = [_prompt_ids(model, tokenizer, p, k, max_new_tokens) for p, k in zip(prompts, keys)]
    eos = eos_ids(model, tokenizer)
    pad_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad_id is None:
        pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = eos[0] if eos else 0

    settings = {"v": _CACHE_VERSION, "fingerprint": fingerprint or model_fingerprint(model),
                "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "eos": eos,
                "prompts": hashlib.sha256(json.dumps([keys, encoded]).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final, partial = cache / f"{key}.jsonl", cache / f"{key}.partial.jsonl"

    done: dict[str, list[int]] = {}
    for f in (final, partial):
        if f.is_file():
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    done[row["id"]] = row["continuation"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass  # a line cut short by a kill: regenerate that prompt
            if f is final:
                break

    todo = [i for i, k in enumerate(keys) if k not in done]
    if todo:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"{key}.settings.json").write_text(json.dumps(settings, indent=1))
        todo.sort(key=lambda i: -len(encoded[i]))  # similar lengths per batch: less padding
        was_training = model.training
        model.eval()
        generate = _generator(model, engine, pad_id)
        bar = _progress(progress, len(todo), "self-distilling")
        with open(partial, "a", encoding="utf-8") as f:
            for b in range(0, len(todo), batch_size):
                idx = todo[b: b + batch_size]
                conts = generate([encoded[i] for i in idx], max_new_tokens, temperature, eos, seed + b)
                for i, c in zip(idx, conts):
                    done[keys[i]] = c
                    f.write(json.dumps({"id": keys[i], "continuation": c}) + "\n")
                f.flush()
                bar.advance(len(idx))
        bar.close()
        del generate  # frees the compact engine's KV cache
        model.train(was_training)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        # rewrite complete cache atomically in prompt order, then drop the partial file
        atomic_write(final, "".join(json.dumps({"id": k, "continuation": done[k]}) + "\n" for k in keys),
                     what="distillation cache")
        partial.unlink(missing_ok=True)

    out = []
    for k, p in zip(keys, encoded):
        c = done[k]
        if c:
            out.append(Example(p + c, [0] * len(p) + [1] * len(c)))
    return out


class _NoBar:
    def advance(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    class _Bar:
        def __init__(self):
            self.p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn())
            self.p.start()
            self.t = self.p.add_task(desc, total=total)

        def advance(self, n):
            self.p.advance(self.t, n)

        def close(self):
            self.p.stop()

    return _Bar()
