"""``accel bench quality``: does acceleration change what the model says?

- **Needle in a haystack**: a random 7-digit "magic number" sentence is hidden at a depth of a
  haystack of N tokens; the model is asked for it (greedy, chat template). Dense vs sparse prefill over
  a grid of lengths x depths; a cell is the share of trials answered correctly.
- **Long-text perplexity**: dense vs sparse prefill over the same long text, scored on its last half.
- **Medusa exactness**: the share of prompts on which greedy Medusa output equals plain greedy output
  token for token (it must be 1.0).
- **RULER suite** (``--suite ruler``, cases from ``bench.ruler``): per task x length accuracy (RULER's
  0-100 scores) of dense vs sparse prefill on the same cases in one run, plus the density and the share
  of heads that really ran sparse; perplexity of natural long text, dense vs sparse, per length.

Sparse prefill is *forced* here (``forced_plan``): at every length, with no dense fallback for layers
whose index keeps most of the work — a fidelity figure must measure the sparse kernels, not hide them.
Cases of one task and length have the same token count, so they run as unpadded batches (which sparse
prefill needs), through eager steps captured in CUDA graphs (the batch-invariant "exact" path prefills
a batch densely).
"""

from __future__ import annotations

import math
import random
import statistics
import time

import torch
import torch.nn.functional as F

__all__ = ["needle_prompt", "needle_grid", "perplexity", "medusa_exactness", "forced_plan", "ruler_suite",
           "perplexity_curve", "sparse_summary"]

NEEDLE = "The special magic number for {city} is {number}."
QUESTION = "\n\nWhat is the special magic number for {city}? Answer with the number only."
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tallinn", "Hobart", "Accra", "Bergen", "Cusco", "Dakar"]


def _haystack() -> list[str]:
    from ..search.calibration import haystack_paragraphs

    return list(haystack_paragraphs())


def needle_prompt(tokenizer, n_tokens: int, depth: float, seed: int) -> tuple[list[int], str]:
    """Chat prompt of about ``n_tokens`` tokens with the needle at ``depth`` (0 = start, 1 = end)."""
    rng = random.Random(seed)
    city, number = rng.choice(CITIES), str(rng.randrange(1_000_000, 10_000_000))
    paras = _haystack()
    rng.shuffle(paras)
    overhead = len(tokenizer(QUESTION.format(city=city) + NEEDLE.format(city=city, number=number))["input_ids"]) + 40
    budget = max(n_tokens - overhead, 16)
    pieces, used, i = [], 0, 0
    while used < budget:
        p = paras[i % len(paras)]
        ids = tokenizer(" " + p)["input_ids"]
        if used + len(ids) > budget:
            ids = ids[: budget - used]
            p = tokenizer.decode(ids)
        pieces.append(p)
        used += len(ids)
        i += 1
    at = round(depth * len(pieces))
    pieces.insert(at, NEEDLE.format(city=city, number=number))
    text = " ".join(pieces) + QUESTION.format(city=city)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"], number
    return tokenizer(text)["input_ids"], number


@torch.no_grad()
def needle_grid(compact, tokenizer, lengths, depths, patterns_for, *, trials: int = 2, eos_ids=(), dense_tail: int = 0,
                progress=None) -> dict:
    """{"dense": grid, "sparse": grid} with grid[depth_i][length_j] = share of correct answers."""
    from ..runtime.decode import generate_plain

    out = {"dense": [[0.0] * len(lengths) for _ in depths], "sparse": [[0.0] * len(lengths) for _ in depths]}
    for j, n in enumerate(lengths):
        for i, depth in enumerate(depths):
            for t in range(trials):
                ids, number = needle_prompt(tokenizer, n, depth, seed=1000 * j + 10 * i + t)
                for mode in ("dense", "sparse"):
                    plan = forced_plan(patterns_for(len(ids)) if mode == "sparse" else None, dense_tail=dense_tail)
                    [r] = generate_plain(compact, [ids], 32, eos_ids=eos_ids, plans=[plan])  # digits are single tokens
                    answer = tokenizer.decode(r.tokens, skip_special_tokens=True)
                    out[mode][i][j] += (number in answer.replace(",", "")) / trials
                if progress:
                    progress()
    return out


@torch.no_grad()
def perplexity(compact, ids: torch.Tensor, patterns=None, stats: list | None = None, dense_tail: int = 0) -> float:
    """Perplexity of the last half of ``ids`` (1, N) with one prefill (dense, or forced sparse patterns)."""
    from ..runtime.attention_meta import AttentionMeta

    compact.setup_cache(1, ids.shape[1])
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    _, hidden = compact(ids, AttentionMeta.prompt(pos, forced_plan(patterns, stats, dense_tail)), last_only=True)
    half = ids.shape[1] // 2
    nll, count = 0.0, 0
    for s in range(half, ids.shape[1] - 1, 1024):  # project to the vocab in chunks: (N, V) is large
        e = min(s + 1024, ids.shape[1] - 1)
        logits = compact.output(hidden[0, s:e]).float()
        nll += F.cross_entropy(logits, ids[0, s + 1:e + 1], reduction="sum").item()
        count += e - s
    return math.exp(nll / count)


@torch.no_grad()
def medusa_exactness(compact, heads, tree, prompts: list[list[int]], max_new_tokens: int, eos_ids=()) -> dict:
    from ..runtime.decode import generate_plain
    from ..runtime.medusa import generate_medusa

    same, accept = 0, []
    for ids in prompts:
        [plain] = generate_plain(compact, [ids], max_new_tokens, eos_ids=eos_ids)
        med = generate_medusa(compact, heads, ids, max_new_tokens, tree=tree, eos_ids=eos_ids)
        same += plain.tokens == med.tokens
        accept += med.accept_lengths
    return {"prompts": len(prompts), "identical": same, "share_identical": same / max(len(prompts), 1),
            "mean_accepted": sum(accept) / max(len(accept), 1), "accept_lengths": accept}


def forced_plan(patterns, stats: list | None = None, dense_tail: int = 0):
    """A prefill plan that runs ``patterns`` (None: dense) at any length and never falls back to dense
    attention; each sparse layer appends what it ran to ``stats`` ({"density", "heads", "sparse_heads"}).
    ``dense_tail``: the pack's exact last rows (runtime.prefill.dense_tail_rows), as the runtime runs it."""
    from ..runtime.prefill import DENSE, PrefillPlan

    return DENSE if patterns is None else PrefillPlan(patterns, dense_above=None, stats=stats, dense_tail=dense_tail)


def sparse_summary(stats: list[dict]) -> dict:
    """Mean kept share of the attention work and share of (layer, head) pairs that ran sparse."""
    if not stats:
        return {"density": None, "sparse_head_share": None}
    return {"density": statistics.mean(s["density"] for s in stats),
            "sparse_head_share": sum(s["sparse_heads"] for s in stats) / sum(s["heads"] for s in stats)}


def _percent(xs) -> float:
    return 100.0 * statistics.mean(xs) if xs else float("nan")


@torch.no_grad()
def ruler_suite(compact, tokenizer, tasks, lengths, patterns_for, *, samples: int = 50, batch: int = 8,
                seed: int = 0, eos_ids=(), examples: int = 2, progress=None, seconds: float | None = None,
                on_row=None, dense_tail: int = 0) -> dict:
    """Dense vs forced-sparse prefill on the same RULER cases -> {"rows": per task x length, "averages"}.

    A row: RULER score (0-100) dense and sparse, sparse - dense, the share of cases whose two answers
    are identical, the sparse runs' density and share of heads run sparse, and the first ``examples``
    cases' answers (to see *how* a case fails).

    ``seconds``: a wall-clock budget for the whole suite, split over the lengths in proportion to their
    token count and evenly over the tasks; a task stops adding batches once its share is spent (at
    least one batch always runs), and its row says how many cases it ran. ``on_row(row)`` is called as
    each row is done (to write results as they come)."""
    from ..runtime.decode import generate_plain
    from .ruler import make_cases

    mode = "graph" if compact.device.type == "cuda" else "eager"  # see the module docstring
    rows = []
    total = sum(lengths) * len(tasks)
    for n in lengths:
        pats = patterns_for(n)
        for task in tasks:
            t0 = time.perf_counter()
            share = None if seconds is None else seconds * n / total
            cases = make_cases(tokenizer, task, n, samples, seed)
            scores, same, stats, shown = {"dense": [], "sparse": []}, 0, [], []
            done = 0
            for i in range(0, len(cases), batch):
                if share is not None and i > 0 and time.perf_counter() - t0 > share * i / (i + batch):
                    break  # the next batch would likely overrun this task's share of the budget
                chunk = cases[i:i + batch]
                done += len(chunk)
                texts = {}
                for m in ("dense", "sparse"):
                    plan = forced_plan(pats if m == "sparse" else None, stats, dense_tail)
                    res = generate_plain(compact, [c.ids for c in chunk], chunk[0].max_new_tokens,
                                         eos_ids=eos_ids, compile=mode, plans=[plan] * len(chunk))
                    texts[m] = [tokenizer.decode(r.tokens, skip_special_tokens=True) for r in res]
                    scores[m] += [c.score(t) for c, t in zip(chunk, texts[m])]
                same += sum(a == b for a, b in zip(texts["dense"], texts["sparse"]))
                for c, d, sp in zip(chunk, texts["dense"], texts["sparse"]):
                    if len(shown) < examples:
                        shown.append({"index": c.index, "answers": c.answers, "dense": d, "sparse": sp})
                if progress:
                    progress(len(chunk))
            dense, sparse = _percent(scores["dense"]), _percent(scores["sparse"])
            rows.append({"task": task, "length": n, "samples": done, "dense": dense, "sparse": sparse,
                         "delta": sparse - dense, "identical_answers": same / done,
                         **sparse_summary(stats), "wall_s": time.perf_counter() - t0, "examples": shown})
            if on_row is not None:
                on_row(rows[-1])
    return {"rows": rows, "averages": ruler_averages(rows)}


def ruler_averages(rows: list[dict]) -> list[dict]:
    """Per length: mean over all tasks and over the needle (niah_*) tasks, dense and sparse."""
    out = []
    for n in sorted({r["length"] for r in rows}):
        at = [r for r in rows if r["length"] == n]
        niah = [r for r in at if r["task"].startswith("niah")]
        out.append({"length": n, "dense": statistics.mean(r["dense"] for r in at),
                    "sparse": statistics.mean(r["sparse"] for r in at),
                    "needle_dense": statistics.mean(r["dense"] for r in niah) if niah else None,
                    "needle_sparse": statistics.mean(r["sparse"] for r in niah) if niah else None,
                    "worst_task_delta": min(r["delta"] for r in at)})
    return out


@torch.no_grad()
def perplexity_curve(compact, tokenizer, lengths, patterns_for, *, seed: int = 0, dense_tail: int = 0) -> list[dict]:
    """Perplexity (last half) of natural long text (bench.ruler.natural_text), dense vs forced sparse."""
    from .ruler import RulerError, natural_text

    ids = tokenizer(natural_text(seed=seed), add_special_tokens=False)["input_ids"]
    rows = []
    for n in lengths:
        if n > len(ids):
            raise RulerError(f"perplexity at {n} tokens: the built-in natural text has only {len(ids)} tokens")
        x = torch.tensor([ids[:n]], device=compact.device)
        stats: list = []
        dense = perplexity(compact, x)
        sparse = perplexity(compact, x, patterns_for(n), stats, dense_tail=dense_tail)
        rows.append({"length": n, "dense": dense, "sparse": sparse, "ratio": sparse / dense, **sparse_summary(stats)})
    return rows
