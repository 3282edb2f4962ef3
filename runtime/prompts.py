"""Prompt files.

- ``-`` reads one prompt from standard input;
- a ``.jsonl`` file holds one prompt per line: ``{"id": ..., "prompt": "..."}`` or
  ``{"id": ..., "messages": [{"role": "user", "content": "..."}, ...]}`` (blank lines are skipped);
- any other file (``.txt``, ``.md``...) is one prompt: its whole text.

Every problem (missing, empty, not UTF-8, bad JSON, wrong fields) raises ``PromptError`` naming the
file and line. ``encode_prompt`` applies the chat template for chat models (``messages`` always, plain
``prompt`` text too unless ``chat=False``) and enforces the context length.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptError

__all__ = ["Prompt", "read_prompt_file", "encode_prompt"]


@dataclass
class Prompt:
    id: str
    prompt: str | None = None
    messages: list[dict] | None = None


def _read_text(path: str) -> str:
    if path == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        p = Path(path)
        if not p.exists():
            raise PromptError(f"prompt file not found: {p}")
        if p.is_dir():
            raise PromptError(f"{p} is a folder; --prompt-file wants a .txt or .jsonl file")
        data = p.read_bytes()
        where = str(p)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptError(f"{where} is not UTF-8 text (bad byte at offset {e.start}): re-save it as UTF-8") from None


def read_prompt_file(path: str) -> list[Prompt]:
    text = _read_text(path)
    if not text.strip():
        raise PromptError(f"prompt file {path} is empty")
    if not str(path).endswith(".jsonl"):
        return [Prompt(id=Path(path).stem if path != "-" else "stdin", prompt=text.rstrip("\n"))]
    prompts, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise PromptError(f"{path}:{n}: each line must be a JSON object with \"prompt\" or \"messages\"")
        pid = str(obj.get("id", n))
        if pid in seen:
            raise PromptError(f"{path}:{n}: duplicate id {pid!r}")
        seen.add(pid)
        if "messages" in obj:
            msgs = obj["messages"]
            ok = isinstance(msgs, list) and msgs and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs)
            if not ok:
                raise PromptError(f"{path}:{n}: \"messages\" must be a non-empty list of "
                                  f"{{\"role\": ..., \"content\": ...}} objects with string values")
            prompts.append(Prompt(pid, messages=msgs))
        elif "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
                raise PromptError(f"{path}:{n}: \"prompt\" must be a non-empty string")
            prompts.append(Prompt(pid, prompt=obj["prompt"]))
        else:
            raise PromptError(f"{path}:{n}: the object needs a \"prompt\" string or a \"messages\" list")
    if not prompts:
        raise PromptError(f"prompt file {path} has no prompts")
    return prompts


def encode_prompt(tokenizer, p: Prompt, *, chat: bool | None = None, context_length: int,
                  max_new_tokens: int, truncate: str | None = None) -> list[int]:
    """Token ids for one prompt. ``chat=None`` applies the chat template when the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if p.messages is not None and not has_template:
        raise PromptError(f"prompt {p.id}: this model has no chat template, so use \"prompt\" instead of \"messages\"")
    use_chat = p.messages is not None or (has_template if chat is None else chat)
    if use_chat and not has_template:
        raise PromptError("--chat asked for, but this model has no chat template")
    if use_chat:
        msgs = p.messages or [{"role": "user", "content": p.prompt}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(p.prompt)["input_ids"]
    budget = context_length - max_new_tokens
    if budget <= 0:
        raise PromptError(f"--max-new-tokens {max_new_tokens} leaves no room in the {context_length}-token context")
    if len(ids) > budget:
        if truncate == "left":
            ids = ids[-budget:]
        else:
            raise PromptError(f"prompt {p.id} has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it "
                              f"exceeds the model's {context_length}-token context: shorten it, lower "
                              f"--max-new-tokens, or pass --truncate left")
    return ids
