"""Prompt files.

- ``-`` reads one prompt from standard input;
- a ``.jsonl`` file holds one prompt per line: ``{"id": ..., "prompt": "..."}`` or
  ``{"id": ..., "messages": [{"role": "user", "content": "..."}, ...]}`` (blank lines are skipped);
- any other file (``.txt``, ``.md``...) is one prompt: its whole text (CRLF read as LF).

Every problem (missing, empty, not UTF-8, bad JSON, wrong fields, too big) raises ``PromptError`` naming
the file and line. Lines are split on ``\\n`` only: U+2028, U+0085 and the like are legal inside JSON
strings (``str.splitlines`` would cut there).

Size limits, enforced while reading (the file is streamed; nothing is loaded before it is checked):

- one prompt (a ``.txt`` file, or one JSONL line) at most ``max_prompt_bytes(context_length)`` =
  ``BYTES_PER_TOKEN`` (32) bytes per token of the model's context, and at least 64 KiB. Real text runs
  at 2-5 bytes per token, so nothing that fits the context is refused; the token count itself is
  checked after tokenizing (``encode_prompt``);
- a whole file at most ``max_file_bytes(context_length)`` = 64 MiB or 4 prompts' worth, whichever
  is more, and ``MAX_PROMPTS`` (100,000) prompts;
- JSON nesting is whatever Python's parser survives; deeper input is refused, never a crash.

``encode_prompt`` applies the chat template for chat models (``messages`` always, plain ``prompt`` text
too unless ``chat=False``) and enforces the context length; ``truncate="left"`` drops the oldest *text*
(the template's header and the generation prompt are kept).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptError

__all__ = ["Prompt", "read_prompt_file", "encode_prompt", "max_prompt_bytes", "max_file_bytes",
           "BYTES_PER_TOKEN", "MAX_PROMPTS", "DEFAULT_CONTEXT_LENGTH"]

BYTES_PER_TOKEN = 32
MIN_PROMPT_BYTES = 64 * 1024
MIN_FILE_BYTES = 64 * 1024 * 1024
MAX_PROMPTS = 100_000
MAX_ID_CHARS = 256
DEFAULT_CONTEXT_LENGTH = 131072  # the bound used when the model's context is not known yet


def max_prompt_bytes(context_length: int | None = None) -> int:
    """The largest prompt (a .txt file, or one JSONL line) read for a model with this context."""
    return max(MIN_PROMPT_BYTES, BYTES_PER_TOKEN * int(context_length or DEFAULT_CONTEXT_LENGTH))


def max_file_bytes(context_length: int | None = None) -> int:
    """The largest prompt file read for a model with this context."""
    return max(MIN_FILE_BYTES, 4 * max_prompt_bytes(context_length))


@dataclass
class Prompt:
    id: str
    prompt: str | None = None
    messages: list[dict] | None = None


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n // 1024} KiB"


def _decode(data: bytes, where: str, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"{where} is not UTF-8 text (bad byte at offset {offset + e.start}): "
                          "re-save it as UTF-8") from None


def _open(path: str):
    """-> (binary stream, printable name, close?)."""
    if path == "-":
        return sys.stdin.buffer, "standard input", False
    p = Path(path)  # messages name the file as the user wrote it
    if not p.exists():
        raise PromptError(f"prompt file not found: {path}")
    if p.is_dir():
        raise PromptError(f"{path} is a folder; --prompt-file wants a .txt or .jsonl file")
    try:
        return open(p, "rb"), path, True  # FIFOs and devices stream too: the limits below bound them
    except OSError as e:
        raise PromptError(f"cannot read prompt file {path}: {(e.strerror or str(e)).lower()}") from None


def read_prompt_file(path: str, *, context_length: int | None = None) -> list[Prompt]:
    """Read and validate a prompt file; ``context_length`` (the model's, when known) scales the size limits."""
    path = str(path)
    f, where, close = _open(path)
    try:
        if path.endswith(".jsonl"):
            return _read_jsonl(f, path, where, context_length)
        return [_read_txt(f, path, where, context_length)]
    except OSError as e:
        raise PromptError(f"cannot read prompt file {where}: {(e.strerror or str(e)).lower()}") from None
    finally:
        if close:
            f.close()


def _read_txt(f, path: str, where: str, context_length: int | None) -> Prompt:
    limit = max_prompt_bytes(context_length)
    data = f.read(limit + 1)
    if len(data) > limit:
        raise PromptError(f"{where} is larger than {_mib(limit)}, the limit for one prompt with a "
                          f"{context_length or DEFAULT_CONTEXT_LENGTH}-token context: shorten it")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = _decode(data, where).replace("\r\n", "\n")
    if not text.strip():
        raise PromptError(f"prompt file {where} is empty")
    return Prompt(id=Path(path).stem if path != "-" else "stdin", prompt=text.rstrip("\n"))


def _read_jsonl(f, path: str, where: str, context_length: int | None) -> list[Prompt]:
    line_limit, file_limit = max_prompt_bytes(context_length), max_file_bytes(context_length)
    prompts, seen, total, n = [], set(), 0, 0
    while True:
        raw = f.readline(line_limit + 2)  # "+2": the line's own "\r\n" does not count
        if not raw:
            break
        n += 1
        offset = total
        total += len(raw)
        body = raw.rstrip(b"\n").rstrip(b"\r")
        if len(body) > line_limit:
            raise PromptError(f"{where}:{n}: line longer than {_mib(line_limit)}, the limit for one prompt "
                              f"with a {context_length or DEFAULT_CONTEXT_LENGTH}-token context: shorten it")
        if total > file_limit:
            raise PromptError(f"{where} is larger than {_mib(file_limit)}, the limit for a prompt file: "
                              "split it into several files")
        if n == 1 and body.startswith(b"\xef\xbb\xbf"):
            body = body[3:]
        line = _decode(body, where, offset)
        if not line.strip():
            continue
        if len(prompts) >= MAX_PROMPTS:
            raise PromptError(f"{where} holds more than {MAX_PROMPTS} prompts: split it into several files")
        prompts.append(_parse_line(line, where, n, seen))
    if not prompts:
        raise PromptError(f"prompt file {where} is empty")
    return prompts


def _check_text(obj, where: str, n: int) -> None:
    """Every string in the parsed line must be encodable text: a JSON ``"\\ud800"`` escape decodes to a lone
    surrogate, which the tokenizer cannot take. Iterative: the line may nest as deep as the parser allowed."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise PromptError(f"{where}:{n}: a string holds an unpaired surrogate (\\u{ord(x[e.start]):04x}): "
                                  "fix the \\u escape") from None
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def _parse_line(line: str, where: str, n: int, seen: set) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptError(f"{where}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise PromptError(f"{where}:{n}: not valid JSON for a prompt (nested too deeply)") from None
    except ValueError:  # an integer with more digits than Python converts (4300)
        raise PromptError(f"{where}:{n}: not valid JSON for a prompt (a number with too many digits)") from None
    if not isinstance(obj, dict):
        raise PromptError(f"{where}:{n}: each line must be a JSON object with \"prompt\" or \"messages\"")
    _check_text(obj, where, n)
    raw_id = obj.get("id", n)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise PromptError(f"{where}:{n}: \"id\" must be a string or an integer")
    pid = str(raw_id)
    if not pid.strip() or len(pid) > MAX_ID_CHARS:
        raise PromptError(f"{where}:{n}: \"id\" must be a non-empty string of at most {MAX_ID_CHARS} characters")
    if pid in seen:
        raise PromptError(f"{where}:{n}: duplicate id {pid!r}")
    seen.add(pid)
    if "messages" in obj:
        msgs = obj["messages"]
        ok = isinstance(msgs, list) and msgs and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs)
        if not ok:
            raise PromptError(f"{where}:{n}: \"messages\" must be a non-empty list of "
                              f"{{\"role\": ..., \"content\": ...}} objects with string values")
        return Prompt(pid, messages=msgs)
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise PromptError(f"{where}:{n}: \"prompt\" must be a non-empty string")
        return Prompt(pid, prompt=obj["prompt"])
    raise PromptError(f"{where}:{n}: the object needs a \"prompt\" string or a \"messages\" list")


def _chat_ids(tokenizer, p: Prompt, msgs: list[dict]) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateError (e.g. "roles must alternate") and friends
        first = " ".join(str(e).split())[:200] or type(e).__name__
        raise PromptError(f"prompt {p.id}: the model's chat template refused the messages: {first}") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _truncate_chat(tokenizer, p: Prompt, msgs: list[dict], budget: int) -> list[int] | None:
    """Drop the oldest text (message contents, oldest first; system messages last) until the templated
    prompt fits ``budget`` tokens. The template's own tokens are never cut. None if nothing fits."""
    msgs = [dict(m) for m in msgs]
    order = [i for i, m in enumerate(msgs) if m["role"] != "system"] + \
            [i for i, m in enumerate(msgs) if m["role"] == "system"]
    for i in order:
        toks = tokenizer(msgs[i]["content"], add_special_tokens=False)["input_ids"]
        msgs[i]["content"] = ""
        if len(_chat_ids(tokenizer, p, msgs)) > budget:
            continue  # even without this message's text it does not fit: drop it all, go on
        lo, hi = 0, len(toks)  # smallest number of leading tokens to drop so that it fits
        while lo < hi:
            mid = (lo + hi) // 2
            msgs[i]["content"] = tokenizer.decode(toks[mid:])
            if len(_chat_ids(tokenizer, p, msgs)) <= budget:
                hi = mid
            else:
                lo = mid + 1
        msgs[i]["content"] = tokenizer.decode(toks[lo:])
        ids = _chat_ids(tokenizer, p, msgs)
        if len(ids) <= budget:
            return ids
    return None


def encode_prompt(tokenizer, p: Prompt, *, chat: bool | None = None, context_length: int,
                  max_new_tokens: int, truncate: str | None = None) -> list[int]:
    """Token ids for one prompt. ``chat=None`` applies the chat template when the tokenizer has one."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if p.messages is not None and not has_template:
        raise PromptError(f"prompt {p.id}: this model has no chat template, so use \"prompt\" instead of \"messages\"")
    use_chat = p.messages is not None or (has_template if chat is None else chat)
    if use_chat and not has_template:
        raise PromptError("--chat asked for, but this model has no chat template")
    budget = context_length - max_new_tokens
    if budget <= 0:
        raise PromptError(f"--max-new-tokens {max_new_tokens} leaves no room in the {context_length}-token context")
    msgs = p.messages or [{"role": "user", "content": p.prompt}]
    ids = _chat_ids(tokenizer, p, msgs) if use_chat else tokenizer(p.prompt)["input_ids"]
    if len(ids) <= budget:
        return ids
    if truncate != "left":
        raise PromptError(f"prompt {p.id} has {len(ids)} tokens; with --max-new-tokens {max_new_tokens} it "
                          f"exceeds the model's {context_length}-token context: shorten it, lower "
                          f"--max-new-tokens, or pass --truncate left")
    if use_chat:
        kept = _truncate_chat(tokenizer, p, msgs, budget)
        if kept is None:
            raise PromptError(f"prompt {p.id}: the chat template alone needs more than {budget} tokens: "
                              "lower --max-new-tokens")
        return kept
    head = tokenizer("")["input_ids"]  # special tokens the tokenizer always adds in front (BOS): keep them
    head = head if ids[: len(head)] == head and len(head) < budget else []
    return head + ids[len(head):][-(budget - len(head)):]
