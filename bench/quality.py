"""``accel bench quality``: does acceleration change what the model says?

- **Needle in a haystack**: a random 7-digit "magic number" sentence is hidden at a depth of a
  haystack of N tokens; the model is asked for it (greedy, chat template). Dense vs sparse prefill over
  a grid of lengths x depths; a cell is the share of trials answered correctly.
- **Long-text perplexity**: dense vs sparse prefill over the same long text, scored on its last half.
- **Medusa exactness**: the share of prompts on which greedy Medusa output equals plain greedy output
  token for token (it must be 1.0).
- **RULER suite** (``--suite ruler``: cases from ``bench.ruler``, the batched runner in
  ``bench.ruler_run``): per task x length accuracy (RULER's 0-100 scores) of dense vs sparse prefill on
  the same cases in one run, plus the density and the share of heads that really ran sparse;
  perplexity of natural long text, dense vs sparse, per length.

Sparse prefill is *forced* here (``forced_plan``): at every length, with no dense fallback for layers
whose index keeps most of the work — a fidelity figure must measure the sparse kernels, not hide them.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

__all__ = ["needle_prompt", "needle_grid", "perplexity", "medusa_exactness", "forced_plan", "sparse_summary"]

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
    nll = token_nll(compact, ids, forced_plan(patterns, stats, dense_tail))
    return math.exp(nll.double().sum().item() / max(nll.numel(), 1))


@torch.no_grad()
def token_nll(compact, ids: torch.Tensor, plan) -> torch.Tensor:
    """(N - 1 - N//2,) fp32 NLL of each next-token target of the last half of ``ids`` (1, N), one prefill
    under ``plan`` (a ``PrefillPlan``: ``forced_plan``'s or the runtime's); on the CPU."""
    from ..runtime.attention_meta import AttentionMeta

    compact.setup_cache(1, ids.shape[1])
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    _, hidden = compact(ids, AttentionMeta.prompt(pos, plan), last_only=True)
    out = []
    for s in range(ids.shape[1] // 2, ids.shape[1] - 1, 1024):  # project to the vocab in chunks: (N, V) is large
        e = min(s + 1024, ids.shape[1] - 1)
        logits = compact.output(hidden[0, s:e]).float()
        out.append(F.cross_entropy(logits, ids[0, s + 1:e + 1], reduction="none"))
    return torch.cat(out).cpu() if out else torch.zeros(0)


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
    """Mean kept share of the attention work and share of (layer, head) pairs that ran sparse. An entry
    with ``rows`` (a batched prefill: its density is the batch's mean) weighs as that many prompts."""
    if not stats:
        return {"density": None, "sparse_head_share": None}
    w = [s.get("rows", 1) for s in stats]
    return {"density": sum(x * s["density"] for x, s in zip(w, stats)) / sum(w),
            "sparse_head_share": sum(x * s["sparse_heads"] for x, s in zip(w, stats)) / sum(x * s["heads"] for x, s in zip(w, stats))}
