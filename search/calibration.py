"""Calibration inputs for the pattern search: exactly `n` tokens of long-context text.

Design points:
* MInference calibrates on one long key-value retrieval sample; a single kind of text can bias the
  search, so the default ("mixed") interleaves prose from the built-in haystack (`haystack.txt`,
  shuffled per seed), generated one-off records (so long inputs do not just repeat the prose), small
  JSON blocks of random UUID key/value pairs and "magic number" needles, and ends with a retrieval
  question whose answer sits at a random depth.  "kv" and "needle" give the pure forms.
* Pieces are tokenized one by one and concatenated, so the length is exact without re-tokenizing.
* The user's own text (`--calibration FILE`) is cut to `n` tokens; a shorter text is an error unless
  `pad=True`, which fills the rest with built-in text.  The held-out validation sample comes from the
  same source: the user text's next `n` tokens when it is long enough, else a built-in sample with
  another seed.
"""
from __future__ import annotations

import json
import random
import uuid
from functools import lru_cache
from pathlib import Path

import torch

from ..runtime.errors import AccelError

__all__ = ["CalibrationError", "KINDS", "builtin_text_pieces", "calibration_ids", "user_text_ids",
           "held_out_ids", "haystack_paragraphs"]

KINDS = ("mixed", "kv", "needle")


class CalibrationError(AccelError):
    """The calibration text cannot give the requested number of tokens."""


@lru_cache(maxsize=1)
def haystack_paragraphs() -> tuple[str, ...]:
    text = (Path(__file__).with_name("haystack.txt")).read_text(encoding="utf-8")
    return tuple(p.strip() for p in text.split("\n\n") if p.strip())


_CITIES = ["Lisbon", "Oslo", "Nairobi", "Quito", "Hanoi", "Tbilisi", "Perth", "Montreal", "Cusco",
           "Bergen", "Accra", "Kyoto", "Valletta", "Tromsø", "Dakar", "Granada", "Tallinn", "Hobart"]
_THINGS = ["lantern", "compass", "violin", "kettle", "telescope", "saddle", "anchor", "typewriter",
           "quilt", "barometer", "rowing boat", "sundial", "loom", "harp", "wheelbarrow", "globe"]
_NAMES = ["Amara", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivo", "Jonas",
          "Kemi", "Lars", "Mei", "Nils", "Olga", "Pavel", "Rosa", "Sanjay", "Tove", "Yusuf"]


def _record(rng: random.Random) -> str:
    """A one-off record paragraph (numbers, names, places): varied text that never repeats."""
    kind = rng.randrange(3)
    if kind == 0:
        lines = [f"Weather log, {rng.choice(_CITIES)}, day {rng.randint(1, 365)}:"]
        for h in range(0, 24, rng.choice((3, 4, 6))):
            lines.append(f"{h:02d}:00 temperature {rng.uniform(-8, 34):.1f} C, wind {rng.randint(0, 60)} km/h "
                         f"from {rng.choice(['N', 'NE', 'E', 'SE', 'S', 'SW', 'W', 'NW'])}, "
                         f"humidity {rng.randint(20, 99)}%.")
        return "\n".join(lines)
    if kind == 1:
        who = rng.sample(_NAMES, 3)
        return (f"Inventory note: {who[0]} lent {who[1]} a {rng.choice(_THINGS)} on the {rng.randint(1, 28)}th, "
                f"and {who[1]} returned it {rng.randint(2, 40)} days later with a {rng.choice(['scratched', 'repaired', 'polished', 'repainted'])} "
                f"handle. {who[2]} counted {rng.randint(3, 900)} items in the store room, "
                f"{rng.randint(1, 60)} fewer than the ledger said, and filed the difference under shelf "
                f"{rng.choice('ABCDEFGH')}{rng.randint(1, 30)}.")
    rows = [f"Match report from {rng.choice(_CITIES)}:"]
    for _ in range(rng.randint(3, 6)):
        a, b = rng.sample(_NAMES, 2)
        rows.append(f"{a} beat {b} {rng.randint(6, 7)}-{rng.randint(0, 5)}, {rng.randint(0, 7)}-{rng.randint(6, 7)}, "
                    f"{rng.randint(6, 7)}-{rng.randint(0, 5)} in {rng.randint(61, 190)} minutes.")
    return "\n".join(rows)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _kv_block(rng: random.Random, pairs: int) -> tuple[str, list[tuple[str, str]]]:
    kv = [(_uuid(rng), _uuid(rng)) for _ in range(pairs)]
    return json.dumps(dict(kv), indent=0), kv


def builtin_text_pieces(kind: str, seed: int):
    """Endless generator of text pieces ("\\n\\n"-prefixed) of the given kind; yields (text, answer)
    where answer is a (question, answer) pair for pieces that can be asked about, else None."""
    if kind not in KINDS:
        raise CalibrationError(f"unknown calibration kind {kind!r}: use one of {', '.join(KINDS)}")
    rng = random.Random(seed)
    paras = list(haystack_paragraphs())
    order: list[str] = []
    i = 0
    while True:
        i += 1
        if kind == "kv":
            text, kv = _kv_block(rng, 8)
            key, val = rng.choice(kv)
            yield "\n" + text, (f'Key: "{key}"\nThe value associated with the specified key is: ', val)
            continue
        if not order:
            order = paras[:]
            rng.shuffle(order)
        piece = order.pop()
        if kind == "mixed" and i % 3 == 0:
            piece = _record(rng)
        yield "\n\n" + piece, None
        if kind == "mixed" and i % 4 == 0:
            text, kv = _kv_block(rng, rng.randint(2, 6))
            key, val = rng.choice(kv)
            yield "\n\n" + text, (f'In the JSON data above, the value of the key "{key}" is: ', val)
        if (kind == "needle" and i % 3 == 0) or (kind == "mixed" and i % 7 == 0):
            city, num = rng.choice(_CITIES), rng.randint(1000000, 9999999)
            yield (f"\n\nThe special magic number for {city} is {num}.",
                   (f"What is the special magic number for {city}? The special magic number for {city} is ", str(num)))


_PREAMBLE = {
    "kv": "Extract the value corresponding to the specified key in the JSON objects below.\n\nJSON data:",
    "needle": "Some special magic numbers are hidden inside the following text. Remember them; you will be asked about one.",
    "mixed": "Read the following documents, records and JSON objects carefully. A question about them follows.",
}


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def calibration_ids(tokenizer, n: int, kind: str = "mixed", seed: int = 0) -> torch.Tensor:
    """A built-in calibration sample of exactly `n` tokens -> (1, n) int64.

    The question at the end asks about a piece chosen at random among those kept (so the answer is
    really in the context, at a random depth)."""
    head = _encode(tokenizer, _PREAMBLE[kind])
    rng = random.Random(seed + 7919)
    ids: list[int] = list(head)
    asks = []
    for text, qa in builtin_text_pieces(kind, seed):
        if qa is not None:
            asks.append((len(ids), qa))
        ids.extend(_encode(tokenizer, text))
        if len(ids) >= n:
            break
    # the question must fit: reserve its tokens, then pick an ask that is still inside the kept body
    question = None
    for _ in range(8):
        if not asks:
            break
        pos, (q, a) = rng.choice(asks)
        q_ids = _encode(tokenizer, "\n\n" + q)
        if pos < n - len(q_ids) - 1:
            question = q_ids
            break
    if question is None:
        question = _encode(tokenizer, "\n\nSummarise the text above in one sentence:")
    question = question[-max(1, n // 4):]  # tiny n (tests): never let the question eat the body
    body = ids[: n - len(question)]
    return torch.tensor([body + question], dtype=torch.long)


def user_text_ids(tokenizer, text: str, n: int, *, pad: bool = False, source: str = "the text",
                  seed: int = 0) -> torch.Tensor:
    """The first `n` tokens of the user's text -> (1, n); shorter text is an error unless `pad`."""
    ids = _encode(tokenizer, text)
    if len(ids) < n:
        if not pad:
            raise CalibrationError(
                f"{source} has only {len(ids)} tokens, fewer than --seq-len {n}: give a longer text, "
                f"lower --seq-len, or pass --pad to fill the rest with the built-in haystack")
        fill = calibration_ids(tokenizer, n - len(ids), kind="needle", seed=seed)[0].tolist()
        ids = ids + fill
    return torch.tensor([ids[:n]], dtype=torch.long)


def held_out_ids(tokenizer, n: int, *, text: str | None = None, kind: str = "mixed",
                 seed: int = 0) -> tuple[torch.Tensor, str]:
    """Validation sample disjoint from the calibration sample -> ((1, n), description)."""
    if text is not None:
        ids = _encode(tokenizer, text)
        if len(ids) >= 2 * n:
            return torch.tensor([ids[n:2 * n]], dtype=torch.long), "calibration file, tokens [n, 2n)"
    other = "mixed" if text is not None else kind
    return calibration_ids(tokenizer, n, kind=other, seed=seed + 1), f"built-in {other}, seed {seed + 1}"
