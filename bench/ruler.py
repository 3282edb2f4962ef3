"""RULER-style long-context cases, generated offline with seeds (RULER's own scripts download essays).

Design points:
* The task families and configurations of RULER's synthetic suite (Hsieh et al. 2024,
  NVIDIA/RULER ``synthetic.yaml``), its prompt templates and answer prefixes, its scoring
  (``string_match_all``: share of expected strings found in the answer; ``string_match_part``: any):
  niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe. QA is left out
  (it needs SQuAD / HotpotQA).
* Our own text, so nothing is downloaded and nothing overlaps the pattern search's calibration text
  (``search/haystack.txt`` + generated records): the "essay" haystack, the perplexity text and the
  common-words vocabulary come from the Python documentation that every CPython ships
  (``pydoc_data.topics``); the "repeat" haystack is RULER's noise sentence; the "needle" haystack is
  other needles. ``shared_ngrams`` is the disjointness check (bench and tests run it).
* Every case is *exactly* ``length`` tokens with the given tokenizer (chat template, question and answer
  prefix included), so the cases of one task and length batch without padding — which sparse prefill
  needs. Haystacks are cut at a token; cwe/fwe lists are sized by search and topped up with newlines.
* A case depends only on (task, length, index, seed): the same command gives the same cases.
"""

from __future__ import annotations

import random
import re
import uuid
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

from ..runtime.errors import AccelError

__all__ = ["TASKS", "RulerCase", "RulerError", "make_case", "make_cases", "score", "natural_text",
           "shared_ngrams", "suite_text_sample"]


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


def natural_text(min_chars: int = 0, seed: int = 0) -> str:
    """Long natural English text (the Python documentation, topics in a seeded order) for perplexity."""
    paras = list(_docs())
    random.Random(seed).shuffle(paras)
    text = "\n\n".join(paras)
    if len(text) < min_chars:
        raise RulerError(f"the built-in natural text has {len(text)} characters, fewer than {min_chars}")
    return text


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """English words for common-words extraction (from the same documentation text)."""
    words = set(re.findall(r"\b[a-z]{3,14}\b", "\n".join(_docs()).lower()))
    return tuple(sorted(words))


def suite_text_sample() -> str:
    """Every fixed text the cases draw from (haystacks, templates, word lists), for disjointness checks."""
    return "\n".join([natural_text(), _NOISE, " ".join(_ADJ), " ".join(_NOUN), " ".join(_vocabulary()),
                      *(t for pair in _TEMPLATES.values() for t in pair)])


def shared_ngrams(text: str, other: str, n: int = 8) -> set[tuple[str, ...]]:
    """Word n-grams (lower-cased, punctuation stripped) that occur in both texts: empty = disjoint."""
    def grams(t):
        w = re.findall(r"[a-z0-9]+", t.lower())
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    return grams(text) & grams(other)


# ---------------------------------------------------------------------------------------------
# framing: chat template + question + answer prefix around the context, exactly `length` tokens
# ---------------------------------------------------------------------------------------------
_SLOT = "\u2063CTX\u2063"  # invisible separator: never produced by the generators


def _encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _frame(tok, template: str, answer_prefix: str, **fields) -> tuple[list[int], list[int], tuple[str, str]]:
    """(ids before the context, ids after it, (the user message with the context elided, answer prefix))."""
    user = template.format(context=_SLOT, **fields)
    answer_prefix = answer_prefix.format(**fields)
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_SLOT)
        pre = _encode(tok, head)
    else:
        head, tail = user.split(_SLOT)
        pre = list(tok(head)["input_ids"])  # BOS where the tokenizer adds one
    return pre, _encode(tok, tail + answer_prefix), (user.replace(_SLOT, "[...]"), answer_prefix)


def _fill(tok, units, needles: list[str], budget: int, rng: random.Random, sep: str = " ") -> list[int]:
    """Haystack units (an iterator of strings) with ``needles`` inserted in order at random depths,
    cut to exactly ``budget`` tokens (needles are never cut)."""
    needle_ids = [_encode(tok, sep + n) for n in needles]
    room = budget - sum(map(len, needle_ids))
    if room < 0:
        raise RulerError(f"{budget} tokens of context cannot hold the needles: use a longer length")
    hay: list[list[int]] = []
    used = 0
    for u in units:
        if used >= room:
            break
        ids = _encode(tok, sep + u)[: room - used]
        hay.append(ids)
        used += len(ids)
    depths = sorted(rng.randint(0, len(hay)) for _ in needles)
    out: list[int] = []
    for i, ids in enumerate(hay + [[]]):
        while depths and depths[0] == i:
            depths.pop(0)
            out += needle_ids[len(needles) - len(depths) - 1]
        out += ids
    assert len(out) == budget, (len(out), budget)
    return out


def _cycle(items, rng: random.Random):
    items = list(items)
    start = rng.randrange(len(items))
    while True:
        yield from items[start:]
        yield from items[:start]
        start = 0


def _padded(tok, ids: list[int], budget: int, filler: str = "") -> list[int]:
    """Top a list context up to exactly ``budget`` tokens: ``filler`` repeated, then newlines."""
    fill = _encode(tok, filler) if filler else []
    while fill and len(ids) + len(fill) <= budget:
        ids = ids + fill
    return ids + _encode(tok, "\n")[-1:] * (budget - len(ids))


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


def _niah(tok, budget_for, rng, a):
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
    pre, post, question = _frame(tok, *_TEMPLATES["niah"], type_v=kind_v, query=query)
    budget = budget_for(pre, post)
    if a["type_haystack"] == "repeat":
        units = iter(lambda: _NOISE, None)
    elif a["type_haystack"] == "essay":
        units = _cycle(_docs(), rng)
    else:  # other needles: distinct keys, random values (RULER's line / KV retrieval)
        taken = set(keys)

        def distractors():
            while True:
                k = _key(rng, a["key"])
                if k not in taken:
                    taken.add(k)
                    yield _needle(k, _value(rng, kind_v), kind_v)
        units = distractors()
    sep = "\n" if a["type_haystack"] == "essay" else " "
    return pre + _fill(tok, units, needles, budget, rng, sep) + post, question, answers


def _vt(tok, budget_for, rng, a):
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
    pre, post, question = _frame(tok, *_TEMPLATES["vt"], query=value, num_v=hops)
    return pre + _fill(tok, iter(lambda: _NOISE, None), needles, budget_for(pre, post), rng) + post, question, list(chain)


def _fit(tok, build, budget: int, lo: int, hi: int, filler: str = "") -> list[int]:
    """The longest ``build(n)`` (a context string) that fits ``budget`` tokens, by bisection on n."""
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        ids = _encode(tok, build(mid))
        if len(ids) <= budget:
            best, lo = ids, mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise RulerError(f"{budget} tokens of context are too few for this task: use a longer length")
    return _padded(tok, best, budget, filler)


def _cwe(tok, budget_for, rng, a):
    vocab = list(_vocabulary())
    rng.shuffle(vocab)
    num_cw, freq_cw, freq_ucw = a["num_cw"], a["freq_cw"], a["freq_ucw"]
    pre, post, _ = _frame(tok, *_TEMPLATES["cwe"], num_cw=num_cw)
    budget = budget_for(pre, post)
    per_entry = len(_encode(tok, " 1234. example")) - 1
    # short contexts (tests, 4K on long tokenizers) get RULER's smaller settings rather than failing
    for num_cw, freq_cw, freq_ucw in ((num_cw, freq_cw, freq_ucw), (10, 10, 2), (5, 4, 1), (3, 2, 1)):
        if num_cw * freq_cw * per_entry <= 0.6 * budget:
            break
    else:
        raise RulerError(f"{budget} tokens of context are too few for cwe: use a longer length")
    pre, post, question = _frame(tok, *_TEMPLATES["cwe"], num_cw=num_cw)
    budget = budget_for(pre, post)
    common, rest = vocab[:num_cw], vocab[num_cw:]
    order_seed = rng.getrandbits(32)

    def build(n_uncommon):
        words = common * freq_cw + rest[:n_uncommon] * freq_ucw
        random.Random(order_seed).shuffle(words)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))

    hi = min(len(rest), budget // max(per_entry * freq_ucw, 1) + 1)
    ctx = _fit(tok, build, budget, 0, hi)
    return pre + ctx + post, question, common


def _fwe(tok, budget_for, rng, a):
    alpha = a["alpha"]
    pre, post, question = _frame(tok, *_TEMPLATES["fwe"])
    budget = budget_for(pre, post)
    vocab_size = max(budget // 50, 8)  # RULER: max_seq_length // 50
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)))
    vocab = sorted(vocab)
    rng.shuffle(vocab)
    vocab[0] = "...."  # the most frequent "word" is noise
    zeta = sum(k ** -alpha for k in range(1, 100_000)) + 100_000 ** (1 - alpha) / (alpha - 1)
    order_seed = rng.getrandbits(32)

    def build(n_words):
        words = [w for k, w in enumerate(vocab, 1) for _ in range(int(n_words * k ** -alpha / zeta))]
        random.Random(order_seed).shuffle(words)
        return " " + " ".join(words)

    ctx = _fit(tok, build, budget, 1, budget * 2, filler=" ....")  # more of the noise word
    return pre + ctx + post, question, vocab[1:4]


_FAMILIES = {"niah": _niah, "vt": _vt, "cwe": _cwe, "fwe": _fwe}


def make_case(tokenizer, task: str, length: int, index: int, seed: int = 0) -> RulerCase:
    """Case ``index`` of ``task`` at ``length`` prompt tokens (deterministic in its arguments)."""
    if task not in TASKS:
        raise RulerError(f"unknown RULER task {task!r}: use one of {', '.join(TASKS)}")
    spec = TASKS[task]
    rng = random.Random(zlib.crc32(f"ruler:{task}:{length}:{index}:{seed}".encode()))

    def budget_for(pre, post):
        b = length - len(pre) - len(post)
        if b < 16:
            raise RulerError(f"length {length} leaves no room for a {task} context: use a longer length")
        return b

    ids, (question, prefix), answers = _FAMILIES[spec.family](tokenizer, budget_for, rng, spec.args)
    assert len(ids) == length, (task, len(ids), length)
    return RulerCase(task, length, index, ids, question, prefix, answers, spec.metric, spec.max_new_tokens)


def make_cases(tokenizer, task: str, length: int, samples: int, seed: int = 0) -> list[RulerCase]:
    return [make_case(tokenizer, task, length, i, seed) for i in range(samples)]

