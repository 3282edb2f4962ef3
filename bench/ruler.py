"""RULER-style long-context cases, generated offline with seeds (RULER's own scripts download essays).

Design points:
* The task families and configurations of RULER's synthetic suite (Hsieh et al. 2024,
  NVIDIA/RULER ``synthetic.yaml``), its prompt templates and answer prefixes, its scoring
  (``string_match_all``: share of expected strings found in the answer; ``string_match_part``: any):
  niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe. QA is left out
  (it needs SQuAD / HotpotQA).
* Our own text, so nothing is downloaded and nothing overlaps the pattern search's calibration text
  (``search/haystack.txt`` + generated records): the "essay" haystack, the "docs" perplexity text and
  the common-words vocabulary come from the Python documentation that every CPython ships
  (``pydoc_data.topics``); the "repeat" haystack is RULER's noise sentence; the "needle" haystack is
  other needles. ``shared_ngrams`` is the disjointness check (bench and tests run it).
* Two perplexity texts (``natural_text(source=...)``). "docs" is the documentation's paragraphs in a
  seeded order: a soup in which 5-8 % of the 8-word runs of the second half of 31K tokens repeat a
  passage thousands of words back, so its perplexity at long range mostly scores copying boilerplate.
  "book" is one continuous novel (``bench/data/botchan.txt.gz``: Natsume's *Botchan*, 1919 English
  translation, public domain; provenance in ``bench/data/README.md``), what PG-19-style long-text
  perplexity means to MInference / RULER users. It is a perplexity text only (no case draws from it).
* Every case is *exactly* ``length`` tokens with the given tokenizer (chat template, question and answer
  prefix included), so the cases of one task and length batch without padding — which sparse prefill
  needs. Haystacks are cut at a token; cwe/fwe lists are sized by search and topped up with newlines.
* A case depends only on (task, length, index, seed): the same command gives the same cases.
* Fast (a 31K-token case in milliseconds, not the ~1 s of re-tokenizing it whole): haystack units,
  list entries and template heads are tokenized once per tokenizer and memoised (``_Encoder``),
  through the fast tokenizer's Rust backend; cwe/fwe lists are sized by summing their entries' token
  counts instead of re-encoding the whole list at every bisection step, and assembled from the
  entries' ids. That assembly equals tokenizing the list whole only for tokenizers that split words
  at spaces (Qwen2, Llama-3, SmolLM2, the tests' byte tokenizer): it is checked against a whole
  encoding on the first case of each family and length, and on a mismatch the family falls back to
  the whole-list bisection for that tokenizer. ``make_case(..., reference=True)`` is the original
  generator (no memo, no shortcut), for tests: both give the same ids.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from ..runtime.errors import AccelError

__all__ = ["TASKS", "RulerCase", "RulerError", "make_case", "make_cases", "score", "natural_text",
           "shared_ngrams", "suite_text_sample", "PPL_TEXTS"]


class RulerError(AccelError):
    """A RULER case cannot be built as asked (length too short for the task, no text source)."""


@dataclass(frozen=True)
class TaskSpec:
    family: str  # niah | vt | cwe | fwe
    max_new_tokens: int
    metric: str = "all"  # RULER: string_match_all for every synthetic task
    args: dict = field(default_factory=dict)


_NIAH = dict(type_haystack="essay", key="words", value="numbers", num_k=1, num_v=1, num_q=1)
TASKS: dict[str, TaskSpec] = {
    "niah_single_1": TaskSpec("niah", 32, args={**_NIAH, "type_haystack": "repeat"}),
    "niah_single_2": TaskSpec("niah", 32, args=_NIAH),
    "niah_single_3": TaskSpec("niah", 64, args={**_NIAH, "value": "uuids"}),
    "niah_multikey_1": TaskSpec("niah", 32, args={**_NIAH, "num_k": 4}),
    "niah_multikey_2": TaskSpec("niah", 32, args={**_NIAH, "type_haystack": "needle"}),
    "niah_multikey_3": TaskSpec("niah", 64, args={**_NIAH, "type_haystack": "needle", "key": "uuids", "value": "uuids"}),
    "niah_multivalue": TaskSpec("niah", 64, args={**_NIAH, "num_v": 4}),
    "niah_multiquery": TaskSpec("niah", 64, args={**_NIAH, "num_q": 4}),
    "vt": TaskSpec("vt", 30, args=dict(num_chains=1, num_hops=4)),
    "cwe": TaskSpec("cwe", 120, args=dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": TaskSpec("fwe", 50, args=dict(alpha=2.0)),
}

# RULER's templates (typo "assgined" fixed); {context} is where the haystack goes
_TEMPLATES = {
    "niah": ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
             "I will quiz you about the {type_v} afterwards.\n{context}\nWhat are all the special magic {type_v} "
             "for {query} mentioned in the provided text?",
             " The special magic {type_v} for {query} mentioned in the provided text are"),
    "vt": ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
           "Question: Find all variables that are assigned the value {query} in the text above.",
           " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
           "assigned the value {query}, they are: "),
    "cwe": ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            "ones that appear most often.\n{context}\nQuestion: What are the {num_cw} most common words in the above list?",
            " Answer: The top {num_cw} words that appear most often in the list are:"),
    "fwe": ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
            "the dots '....'. What are the three most frequently appeared words in the above coded text?",
            " Answer: According to the coded text above, the three most frequently appeared words are:"),
}
_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_ADJ = ("abundant agile amber ancient brave breezy bright calm candid clever cosmic crimson curious dapper "
        "daring dusty eager early elegant fancy fierce fluffy frosty gentle giant glossy golden grumpy handy "
        "hidden hollow humble icy jolly keen lively lucky lunar mellow mighty misty modest nimble noble odd "
        "polite proud quiet rapid rustic scarlet shiny silent silver sleepy smooth snowy solid spicy steady "
        "stormy sunny swift tame tidy tiny velvet vivid wandering witty young zesty").split()
_NOUN = ("anchor apricot badger banjo beacon beetle biscuit blanket bridge button cactus camel canyon carrot "
         "castle cello chimney cobra comet cottage crayon dolphin dragon falcon feather ferret fiddle garden "
         "glacier goblet harbor hazel helmet heron island jacket kettle lantern lemon lizard magnet marble "
         "meadow mirror monkey needle orchard otter paddle parrot pebble pepper pillow planet pony puzzle "
         "quarry rabbit ribbon saddle salmon sparrow spoon summit teapot thistle tiger tulip turnip violin "
         "walnut whistle willow window zebra").split()


@dataclass
class RulerCase:
    task: str
    length: int
    index: int
    ids: list[int]  # exactly `length` tokens: the chat prompt up to and including the answer prefix
    question: str  # the user message with its context elided (the full text is tokenizer.decode(ids))
    answer_prefix: str
    answers: list[str]
    metric: str  # "all" (string_match_all) or "part" (string_match_part)
    max_new_tokens: int

    def score(self, prediction: str) -> float:
        return score(prediction, self.answers, self.metric)


def score(prediction: str, answers: list[str], metric: str = "all") -> float:
    """RULER's scoring: 'all' = share of the answers found in the prediction (case-insensitive),
    'part' = 1 if any is found. In [0, 1]."""
    pred = re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip().lower()
    hits = [a.lower() in pred for a in answers]
    return (sum(hits) / len(hits)) if metric == "all" else float(any(hits))


# ---------------------------------------------------------------------------------------------
# text sources
# ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _docs() -> tuple[str, ...]:
    """Paragraphs of the Python documentation shipped with CPython (``pydoc_data.topics``)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; it is CPython's standard library
        raise RulerError("the RULER essay haystack needs CPython's pydoc_data module (standard library); "
                         "install your distribution's full Python standard library") from None
    paras = []
    for name in sorted(topics):
        for p in re.split(r"\n\s*\n", topics[name]):
            p = re.sub(r"[ \t]+", " ", p.strip())
            if len(p) > 40 and not set(p) <= set("*=-~ "):
                paras.append(p)
    return tuple(paras)


PPL_TEXTS = ("book", "docs")  # natural_text sources; bench quality's --ppl-text default order


@lru_cache(maxsize=1)
def _book() -> str:
    """The novel in ``data/botchan.txt.gz`` (Gutenberg header, footer and typo notes already stripped)."""
    import gzip
    from pathlib import Path

    path = Path(__file__).with_name("data") / "botchan.txt.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    except OSError as e:  # a broken install (package data left out), not a user error to work around
        raise RulerError(f"the built-in book text {path} cannot be read ({e}); reinstall accel") from None


def natural_text(min_chars: int = 0, seed: int = 0, source: str = "docs") -> str:
    """Long natural English text for perplexity.

    ``source="docs"``: the Python documentation, topics in a seeded order. ``source="book"``: one
    continuous novel, always the same text (a shuffle would break the long-range prose it is there
    for; ``seed`` is ignored)."""
    if source == "book":
        text = _book()
    elif source == "docs":
        paras = list(_docs())
        random.Random(seed).shuffle(paras)
        text = "\n\n".join(paras)
    else:
        raise RulerError(f"unknown perplexity text {source!r}: choose from {', '.join(PPL_TEXTS)}")
    if len(text) < min_chars:
        raise RulerError(f"the built-in {source} text has {len(text)} characters, fewer than {min_chars}")
    return text


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """English words for common-words extraction (from the same documentation text)."""
    words = set(re.findall(r"\b[a-z]{3,14}\b", "\n".join(_docs()).lower()))
    return tuple(sorted(words))


def suite_text_sample() -> str:
    """Every fixed text the cases and the perplexity texts draw from (haystacks, templates, word lists,
    the book), for disjointness checks."""
    return "\n".join([natural_text(), natural_text(source="book"), _NOISE, " ".join(_ADJ), " ".join(_NOUN),
                      " ".join(_vocabulary()), *(t for pair in _TEMPLATES.values() for t in pair)])


def shared_ngrams(text: str, other: str, n: int = 8) -> set[tuple[str, ...]]:
    """Word n-grams (lower-cased, punctuation stripped) that occur in both texts: empty = disjoint."""
    def grams(t):
        w = re.findall(r"[a-z0-9]+", t.lower())
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    return grams(text) & grams(other)


# ---------------------------------------------------------------------------------------------
# encoding: memoised pieces through the tokenizer's Rust backend
# ---------------------------------------------------------------------------------------------
_PROBES = ("Some special magic numbers for calm-otter are: 1234567.", " 12. apple 13. pear\n\n", "\nVAR ABCDE = 12345.",
           "  two  spaces. ....", "One of the special magic uuids for 3f2a-11 is: 9c1d.")
_MEMO_MAX = 400_000  # memoised pieces per tokenizer (documentation paragraphs, numbers, words: ~30K at 31K)


class _Encoder:
    """Token ids of text for one tokenizer, as ``tok(text, add_special_tokens=False)["input_ids"]``.

    ``ids`` encodes (through the fast tokenizer's Rust backend when it agrees with the full call on
    probe strings: half the per-call cost); ``piece`` / ``pieces`` memoise texts that recur (haystack
    units, list entries, template heads) — treat the returned lists as read-only. ``reference``: no
    memo, no shortcut, no piecewise lists (the original generator)."""

    def __init__(self, tok, reference: bool = False):
        self.tok, self.reference = tok, reference
        self.memo: dict[str, list[int]] = {}
        self.numbers: list[list[int]] = []  # ids of cwe's entry numbers: "1.", " 2.", " 3.", ...
        self.checked: set = set()  # (family, length) whose piecewise list was checked against a whole encoding
        self.piecewise_ok = {"cwe": not reference, "fwe": not reference}
        self.backend = None
        bt = getattr(tok, "backend_tokenizer", None) if not reference else None
        if bt is not None:
            try:
                if all(bt.encode(t, add_special_tokens=False).ids == self._call(t) for t in _PROBES):
                    self.backend = bt
            except Exception:  # an unusual backend: the plain call is always right
                self.backend = None

    def _call(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def ids(self, text: str) -> list[int]:
        if self.backend is not None:
            return self.backend.encode(text, add_special_tokens=False).ids
        return self._call(text)

    def many(self, texts: list[str]) -> list[list[int]]:
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [self.ids(t) for t in texts]

    def piece(self, text: str) -> list[int]:
        if self.reference:
            return self.ids(text)
        got = self.memo.get(text)
        if got is None:
            if len(self.memo) >= _MEMO_MAX:
                self.memo.clear()
            got = self.memo[text] = self.ids(text)
        return got

    def pieces(self, texts) -> list[list[int]]:
        texts = list(texts)
        if self.reference:
            return [self.ids(t) for t in texts]
        missing = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if missing:
            if len(self.memo) + len(missing) >= _MEMO_MAX:
                self.memo.clear()
                missing = list(dict.fromkeys(texts))
            self.memo.update(zip(missing, self.many(missing)))
        return [self.memo[t] for t in texts]

    def number_pieces(self, count: int) -> list[list[int]]:
        """Ids of cwe's first ``count`` entry numbers ("1." then " 2.", " 3.", ...)."""
        if len(self.numbers) < count:
            start = len(self.numbers)
            self.numbers += self.many([f"{i + 1}." if i == 0 else f" {i + 1}." for i in range(start, max(count, 2 * start))])
        return self.numbers


_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _encoder(tok, reference: bool = False) -> _Encoder:
    if reference:
        return _Encoder(tok, reference=True)
    try:
        enc = _ENCODERS.get(tok)
        if enc is None:
            enc = _ENCODERS[tok] = _Encoder(tok)
        return enc
    except TypeError:  # a tokenizer that cannot be weakly referenced: no memo across cases
        return _Encoder(tok)


# ---------------------------------------------------------------------------------------------
# framing: chat template + question + answer prefix around the context, exactly `length` tokens
# ---------------------------------------------------------------------------------------------
_SLOT = "\u2063CTX\u2063"  # invisible separator: never produced by the generators


def _frame(enc: _Encoder, template: str, answer_prefix: str, **fields) -> tuple[list[int], list[int], tuple[str, str]]:
    """(ids before the context, ids after it, (the user message with the context elided, answer prefix))."""
    tok = enc.tok
    user = template.format(context=_SLOT, **fields)
    answer_prefix = answer_prefix.format(**fields)
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_SLOT)
        pre = enc.piece(head)  # the same for every case of a task
    else:
        head, tail = user.split(_SLOT)
        pre = list(tok(head)["input_ids"])  # BOS where the tokenizer adds one
    return list(pre), enc.ids(tail + answer_prefix), (user.replace(_SLOT, "[...]"), answer_prefix)


def _fill(enc: _Encoder, units, needles: list[str], budget: int, rng: random.Random, sep: str = " ") -> list[int]:
    """Haystack units (an iterator of token-id lists) with ``needles`` inserted in order at random
    depths, cut to exactly ``budget`` tokens (needles are never cut)."""
    needle_ids = [enc.ids(sep + n) for n in needles]
    room = budget - sum(map(len, needle_ids))
    if room < 0:
        raise RulerError(f"{budget} tokens of context cannot hold the needles: use a longer length")
    hay: list[list[int]] = []
    used = 0
    for ids in units:  # (a unit is drawn before the check: the rng moves as it always did)
        if used >= room:
            break
        if len(ids) > room - used:
            ids = ids[: room - used]
        hay.append(ids)
        used += len(ids)
    if isinstance(units, _Drawn):
        units.settle()
    depths = sorted(rng.randint(0, len(hay)) for _ in needles)
    out: list[int] = []
    for i, ids in enumerate(hay + [[]]):
        while depths and depths[0] == i:
            depths.pop(0)
            out += needle_ids[len(needles) - len(depths) - 1]
        out += ids
    assert len(out) == budget, (len(out), budget)
    return out


class _Drawn:
    """Ids of the units ``draw()`` makes one at a time from ``rng`` (distractor needles: each new),
    encoded in batches — one ``encode_batch`` call instead of a call per unit. Drawing ahead moves
    the rng (and ``taken``, the keys ``draw`` has used) past what was handed out; ``settle()`` rewinds
    both to just after the last unit handed out, so the case is what drawing one by one makes."""

    def __init__(self, enc: _Encoder, draw, sep: str, rng: random.Random, taken: set, budget: int):
        self.enc, self.draw, self.sep, self.rng, self.taken, self.budget = enc, draw, sep, rng, taken, budget
        self.state, self.taken0, self.given = None, set(), 0

    def __iter__(self):
        want, tokens, units = 32, 0, 0
        while True:
            self.state, self.taken0, self.given = self.rng.getstate(), set(self.taken), 0
            texts = [self.sep + self.draw() for _ in range(want)]
            for ids in self.enc.many(texts):
                self.given += 1
                tokens, units = tokens + len(ids), units + 1
                yield ids
            # about as many as the rest of the budget needs (one batch call each round)
            want = min(1024, max(8, int((self.budget - tokens) * units / max(tokens, 1)) + 2))

    def settle(self) -> None:
        if self.state is None:
            return
        self.rng.setstate(self.state)
        self.taken.clear()
        self.taken.update(self.taken0)
        for _ in range(self.given):
            self.draw()
        self.state = None


def _cycle(items, rng: random.Random):
    items = list(items)
    start = rng.randrange(len(items))
    while True:
        yield from items[start:]
        yield from items[:start]
        start = 0


def _padded(enc: _Encoder, ids: list[int], budget: int, filler: str = "") -> list[int]:
    """Top a list context up to exactly ``budget`` tokens: ``filler`` repeated, then newlines."""
    fill = enc.piece(filler) if filler else []
    if fill and len(ids) + len(fill) <= budget:
        ids = ids + fill * ((budget - len(ids)) // len(fill))
    return ids + enc.piece("\n")[-1:] * (budget - len(ids))


# ---------------------------------------------------------------------------------------------
# task families
# ---------------------------------------------------------------------------------------------
def _key(rng, kind):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4)) if kind == "uuids" else \
        f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}"


def _value(rng, kind):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4)) if kind == "uuids" else str(rng.randint(10 ** 6, 10 ** 7 - 1))


def _needle(key, value, kind):
    return f"One of the special magic {kind} for {key} is: {value}."


def _niah(enc, budget_for, rng, a, length):
    kind_v = a["value"]
    keys: list[str] = []
    while len(keys) < max(a["num_k"], a["num_q"]):
        k = _key(rng, a["key"])
        if k not in keys:
            keys.append(k)
    values = [[_value(rng, kind_v) for _ in range(a["num_v"])] for _ in keys]
    needles = [_needle(k, v, kind_v) for k, vs in zip(keys, values) for v in vs]
    order = list(range(len(needles)))
    rng.shuffle(order)
    needles = [needles[i] for i in order]
    asked = list(range(a["num_q"])) if a["num_q"] > 1 else [rng.randrange(len(keys))]
    query = ", ".join(keys[i] for i in asked[:-1]) + (", and " if len(asked) > 1 else "") + keys[asked[-1]]
    answers = [v for i in asked for v in values[i]]
    pre, post, question = _frame(enc, *_TEMPLATES["niah"], type_v=kind_v, query=query)
    budget = budget_for(pre, post)
    sep = "\n" if a["type_haystack"] == "essay" else " "
    if a["type_haystack"] == "repeat":
        units = (enc.piece(sep + u) for u in iter(lambda: _NOISE, None))
    elif a["type_haystack"] == "essay":
        units = (enc.piece(sep + u) for u in _cycle(_docs(), rng))
    else:  # other needles: distinct keys, random values (RULER's line / KV retrieval)
        taken = set(keys)

        def distractor():
            while True:
                k = _key(rng, a["key"])
                if k not in taken:
                    taken.add(k)
                    return _needle(k, _value(rng, kind_v), kind_v)
        if enc.reference:
            units = (enc.ids(sep + distractor()) for _ in itertools.count())
        else:
            units = _Drawn(enc, distractor, sep, rng, taken, budget)
    return pre + _fill(enc, units, needles, budget, rng, sep) + post, question, answers


def _vt(enc, budget_for, rng, a, length):
    names: list[str] = []
    while len(names) < a["num_chains"] * (a["num_hops"] + 1):
        n = "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5))
        if n not in names:
            names.append(n)
    hops = a["num_hops"] + 1
    chains, statements = [], []
    for c in range(a["num_chains"]):
        chain = names[c * hops:(c + 1) * hops]
        value = str(rng.randint(10000, 99999))
        chains.append((chain, value))
        statements.append([f"VAR {chain[0]} = {value}."] + [f"VAR {chain[i]} = VAR {chain[i - 1]}." for i in range(1, hops)])
    # chains interleave, each in its own order
    order = [c for c in range(len(chains)) for _ in range(hops)]
    rng.shuffle(order)
    pos = [0] * len(chains)
    needles = []
    for c in order:
        needles.append(statements[c][pos[c]])
        pos[c] += 1
    chain, value = chains[0]
    pre, post, question = _frame(enc, *_TEMPLATES["vt"], query=value, num_v=hops)
    noise = (enc.piece(" " + u) for u in iter(lambda: _NOISE, None))
    return pre + _fill(enc, noise, needles, budget_for(pre, post), rng) + post, question, list(chain)


def _bisect(count, budget: int, lo: int, hi: int) -> int | None:
    """The largest n in [lo, hi] with count(n) <= budget (count non-decreasing), by bisection."""
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if count(mid) <= budget:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _fit(enc: _Encoder, build, budget: int, lo: int, hi: int, filler: str = "", piecewise=None,
         family: str = "", length: int = 0) -> list[int]:
    """The longest ``build(n)`` (a context string) that fits ``budget`` tokens, topped up to exactly
    ``budget``. ``piecewise`` = (count(n), ids(n)): the token count and ids of ``build(n)`` summed
    from its entries' memoised ids — checked against a whole encoding on the first case of a
    (family, length) and used alone after that; without it (or on a mismatch), bisection re-encodes
    ``build(n)`` whole at every step (the reference path)."""
    if piecewise is not None and enc.piecewise_ok.get(family):
        count, ids_of = piecewise
        n = _bisect(count, budget, lo, hi)
        if n is None:
            raise RulerError(f"{budget} tokens of context are too few for this task: use a longer length")
        ids = ids_of(n)
        if (family, length) not in enc.checked:  # the first case of this family and length: check it
            whole = enc.ids(build(n))
            above = n + 1 > hi or count(n + 1) == len(enc.ids(build(n + 1)))
            if whole == ids and above:
                enc.checked.add((family, length))
            else:  # this tokenizer merges across entries: whole-list bisection from now on
                enc.piecewise_ok[family] = False
                return _fit(enc, build, budget, lo, hi, filler)
        return _padded(enc, ids, budget, filler)
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        ids = enc.ids(build(mid))
        if len(ids) <= budget:
            best, lo = ids, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise RulerError(f"{budget} tokens of context are too few for this task: use a longer length")
    return _padded(enc, best, budget, filler)


def _joined(parts) -> list[int]:
    out: list[int] = []
    for p in parts:
        out += p
    return out


def _cwe(enc, budget_for, rng, a, length):
    vocab = list(_vocabulary())
    rng.shuffle(vocab)
    num_cw, freq_cw, freq_ucw = a["num_cw"], a["freq_cw"], a["freq_ucw"]
    pre, post, _ = _frame(enc, *_TEMPLATES["cwe"], num_cw=num_cw)
    budget = budget_for(pre, post)
    per_entry = len(enc.piece(" 1234. example")) - 1
    # short contexts (tests, 4K on long tokenizers) get RULER's smaller settings rather than failing
    for num_cw, freq_cw, freq_ucw in ((num_cw, freq_cw, freq_ucw), (10, 10, 2), (5, 4, 1), (3, 2, 1)):
        if num_cw * freq_cw * per_entry <= 0.6 * budget:
            break
    else:
        raise RulerError(f"{budget} tokens of context are too few for cwe: use a longer length")
    pre, post, question = _frame(enc, *_TEMPLATES["cwe"], num_cw=num_cw)
    budget = budget_for(pre, post)
    common, rest = vocab[:num_cw], vocab[num_cw:]
    order_seed = rng.getrandbits(32)

    def words_of(n_uncommon):
        words = common * freq_cw + rest[:n_uncommon] * freq_ucw
        random.Random(order_seed).shuffle(words)
        return words

    def build(n_uncommon):
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words_of(n_uncommon)))

    hi = min(len(rest), budget // max(per_entry * freq_ucw, 1) + 1)
    piecewise = None
    if enc.piecewise_ok["cwe"]:  # an entry "12. word" = " 12." + " word" (the first: "1." + " word")
        word_ids = dict(zip(vocab, enc.pieces(" " + w for w in vocab)))
        n_entries = lambda n: num_cw * freq_cw + n * freq_ucw  # noqa: E731
        numbers = enc.number_pieces(n_entries(hi) + 1)
        num_sum = [0, *itertools.accumulate(len(numbers[i]) for i in range(n_entries(hi) + 1))]
        rest_sum = [0, *itertools.accumulate(len(word_ids[w]) for w in rest[: hi + 1])]
        common_len = freq_cw * sum(len(word_ids[w]) for w in common)

        def count(n):
            return num_sum[n_entries(n)] + common_len + freq_ucw * rest_sum[n]

        def ids_of(n):
            return _joined(p for i, w in enumerate(words_of(n)) for p in (numbers[i], word_ids[w]))
        piecewise = (count, ids_of)
    ctx = _fit(enc, build, budget, 0, hi, piecewise=piecewise, family="cwe", length=length)
    return pre + ctx + post, question, common


@lru_cache(maxsize=8)
def _zeta(alpha: float) -> float:
    """Riemann zeta(alpha), as RULER approximates it (100K terms + the tail's integral; ~10 ms)."""
    return sum(k ** -alpha for k in range(1, 100_000)) + 100_000 ** (1 - alpha) / (alpha - 1)


def _fwe(enc, budget_for, rng, a, length):
    alpha = a["alpha"]
    pre, post, question = _frame(enc, *_TEMPLATES["fwe"])
    budget = budget_for(pre, post)
    vocab_size = max(budget // 50, 8)  # RULER: max_seq_length // 50
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)))
    vocab = sorted(vocab)
    rng.shuffle(vocab)
    vocab[0] = "...."  # the most frequent "word" is noise
    zeta = _zeta(alpha)
    order_seed = rng.getrandbits(32)
    weights = [k ** -alpha for k in range(1, len(vocab) + 1)]

    def words_of(n_words):
        words = [w for w, p in zip(vocab, weights) for _ in range(int(n_words * p / zeta))]
        random.Random(order_seed).shuffle(words)
        return words

    def build(n_words):
        return " " + " ".join(words_of(n_words))

    piecewise = None
    if enc.piecewise_ok["fwe"]:  # the list " w1 w2 ..." = " w1" + " w2" + ...; random words: not memoised
        word_ids = dict(zip(vocab, enc.many([" " + w for w in vocab])))
        lens = [len(word_ids[w]) for w in vocab]

        def count(n):
            return sum(int(n * p / zeta) * k for p, k in zip(weights, lens))

        def ids_of(n):
            return _joined(word_ids[w] for w in words_of(n))
        piecewise = (count, ids_of)
    ctx = _fit(enc, build, budget, 1, budget * 2, filler=" ....", piecewise=piecewise, family="fwe", length=length)
    return pre + ctx + post, question, vocab[1:4]


_FAMILIES = {"niah": _niah, "vt": _vt, "cwe": _cwe, "fwe": _fwe}


def make_case(tokenizer, task: str, length: int, index: int, seed: int = 0, *, reference: bool = False) -> RulerCase:
    """Case ``index`` of ``task`` at ``length`` prompt tokens (deterministic in its arguments).
    ``reference``: the original generator (every text encoded whole, nothing memoised), for tests."""
    if task not in TASKS:
        raise RulerError(f"unknown RULER task {task!r}: use one of {', '.join(TASKS)}")
    spec = TASKS[task]
    rng = random.Random(zlib.crc32(f"ruler:{task}:{length}:{index}:{seed}".encode()))

    def budget_for(pre, post):
        b = length - len(pre) - len(post)
        if b < 16:
            raise RulerError(f"length {length} leaves no room for a {task} context: use a longer length")
        return b

    enc = _encoder(tokenizer, reference)
    ids, (question, prefix), answers = _FAMILIES[spec.family](enc, budget_for, rng, spec.args, length)
    assert len(ids) == length, (task, len(ids), length)
    return RulerCase(task, length, index, ids, question, prefix, answers, spec.metric, spec.max_new_tokens)


def make_cases(tokenizer, task: str, length: int, samples: int, seed: int = 0, start: int = 0) -> list[RulerCase]:
    """Cases ``start .. start + samples - 1`` of ``task`` at ``length``."""
    return [make_case(tokenizer, task, length, i, seed) for i in range(start, start + samples)]
