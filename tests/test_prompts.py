"""Prompt files: formats and every bad-input case."""

import pytest

from accel.runtime.errors import PromptError
from accel.runtime.prompts import Prompt, encode_prompt, read_prompt_file
from .conftest import make_tokenizer


def test_txt_is_one_prompt(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("line one\nline two\n")
    [p] = read_prompt_file(str(f))
    assert p.id == "q" and p.prompt == "line one\nline two"


def test_jsonl_prompt_and_messages(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "a", "prompt": "hi"}\n\n{"messages": [{"role": "user", "content": "yo"}]}\n')
    a, b = read_prompt_file(str(f))
    assert (a.id, a.prompt) == ("a", "hi")
    assert b.id == "3" and b.messages[0]["content"] == "yo"


@pytest.mark.parametrize("content,msg", [
    (b"", "is empty"),
    (b"   \n\n", "is empty"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b'{"prompt": "ok"}\n{"prompt": oops}\n', "q.jsonl:2: not valid JSON"),
    (b'["a list"]\n', "JSON object"),
    (b'{"text": "no prompt key"}\n', "needs a \\\"prompt\\\" string"),
    (b'{"prompt": ""}\n', "non-empty string"),
    (b'{"messages": [{"role": "user"}]}\n', "messages"),
    (b'{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "duplicate id"),
])
def test_bad_files(tmp_path, content, msg):
    f = tmp_path / "q.jsonl"
    f.write_bytes(content)
    with pytest.raises(PromptError, match=msg):
        read_prompt_file(str(f))


def test_missing_and_folder(tmp_path):
    with pytest.raises(PromptError, match="not found"):
        read_prompt_file(str(tmp_path / "none.jsonl"))
    with pytest.raises(PromptError, match="is a folder"):
        read_prompt_file(str(tmp_path))


def test_encode_chat_and_context():
    tok = make_tokenizer()
    ids = encode_prompt(tok, Prompt("a", prompt="hi"), context_length=100, max_new_tokens=10)
    assert tok.decode(ids) == "<|user|>hi<|end|><|assistant|>"
    raw = encode_prompt(tok, Prompt("a", prompt="hi"), chat=False, context_length=100, max_new_tokens=10)
    assert tok.decode(raw) == "hi"
    long = Prompt("long", prompt="x" * 200)
    with pytest.raises(PromptError, match="--truncate left"):
        encode_prompt(tok, long, chat=False, context_length=100, max_new_tokens=10)
    kept = encode_prompt(tok, long, chat=False, context_length=100, max_new_tokens=10, truncate="left")
    assert len(kept) == 90
    with pytest.raises(PromptError, match="no room"):
        encode_prompt(tok, Prompt("a", prompt="hi"), context_length=100, max_new_tokens=100)
