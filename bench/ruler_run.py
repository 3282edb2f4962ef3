"""``accel bench quality --suite ruler``: dense vs forced-sparse prefill on the same RULER cases, fast.

The suite must run 11 tasks x 4 lengths x 50 cases, each prefilled twice, in minutes on one GPU, so
beyond the model's own work it may add little. Design points:

* Every case of a task and length is exactly ``length`` tokens (``bench.ruler``), so a batch of them
  prefills as ONE (B, N) forward per mode instead of B forwards: dense into cache rows 0..B-1, forced
  sparse (one ``PrefillPlan`` per task x length, its patterns scaled once per length) into rows
  B..2B-1. A case still attends only to itself, at its own exact length (its own cache row; the
  sparse index is built per (case, head)), so its answer is the one it gets prefilled alone, up to
  the rounding of batched matmuls. Very long batches are split so no forward holds more than
  ``max_prefill_tokens`` tokens (activation memory).
* The 2B rows then decode greedily as one batch through one captured step (a CUDA graph on a GPU)
  per batch size, reused by every batch of a length: the cache is set up once per length, for the
  longest answer of the selected tasks. Every task keeps RULER's ``max_new_tokens``; the loop stops
  as soon as every row has emitted EOS (checked every ``_CHECK_EVERY`` tokens, one host sync each).
* Building cases is host work: the next batch's cases are built while the GPU runs this batch's
  dense prefill (its kernel launches return at once), so on a GPU it is almost free. Cases are built
  per batch, not per task up front, so a ``--seconds`` budget that stops a task early wastes none.
* Scoring, answers and rows are what they were: RULER's scores per task x length, dense and sparse on
  the same cases, the sparse runs' density and share of heads run sparse, the first ``examples``
  answers; ``on_row`` gets each row as it finishes. A row's ``timing`` splits its ``wall_s`` into
  host wall-clock phases (cases, dense, sparse, decode, score; on a GPU the case building overlaps
  the dense prefill, whose phase is then only the wait left after it).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from .quality import forced_plan, perplexity, sparse_summary

__all__ = ["ruler_suite", "ruler_averages", "perplexity_curve", "batches"]

_CHECK_EVERY = 8  # decode steps between "has every row emitted EOS?" reads (a host sync each)
PHASES = ("cases", "dense", "sparse", "decode", "score")


def batches(samples: int, batch: int) -> list[tuple[int, int]]:
    """Case index ranges [lo, hi) of near-equal batches of at most ``batch`` cases (50 by 16: 12,13,12,13)."""
    k = -(-samples // batch)
    bounds = [samples * i // k for i in range(k + 1)]
    return list(zip(bounds, bounds[1:]))


class _Phases:
    """Wall-clock seconds per phase of one row (the phases tile the row's wall time)."""

    def __init__(self):
        self.s = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] += time.perf_counter() - t


def _prefill(compact, ids: torch.Tensor, plan, row0: int, backend: str, rows_per_call: int) -> torch.Tensor:
    """Prompts ``ids`` (B, N) of one length, each alone in cache rows row0.. -> greedy first tokens (B,).
    No host sync of its own (a sparse plan's stats do sync per layer)."""
    from ..runtime.attention_meta import AttentionMeta

    B, N = ids.shape
    pos = torch.arange(N, device=ids.device)[None]  # (1, N)
    first = []
    for s, e in batches(B, rows_per_call):  # near-equal calls (16 + 9 -> 13 + 12: fewer kernel variants)
        x = ids[s:e]  # (b, N)
        meta = AttentionMeta.prompt(pos.expand(x.shape[0], N), plan, row0=row0 + s)
        seen = len(plan.stats) if plan.stats is not None else 0
        logits, _ = compact(x, meta, backend=backend, last_only=True)
        for entry in plan.stats[seen:] if plan.stats is not None else ():
            entry["rows"] = x.shape[0]  # a batch's density is its mean: weigh it by its prompts
        first.append(logits[:, -1].argmax(-1))  # greedy, as runtime.sampling.sample at temperature 0
    return torch.cat(first)


def _greedy(compact, first: torch.Tensor, n: int, max_new: int, eos_ids, mode: str) -> list[list[int]]:
    """Greedy decode of cache rows 0..R-1, each holding an n-token prompt, from their first new tokens
    ``first`` (R,) -> each row's new tokens, cut after its first EOS (kept), as ``generate_plain``."""
    from ..runtime.plain import decode_one_token
    from ..runtime.steps import backend_for, capture_mode, get_step

    dev, R = first.device, first.shape[0]
    backend = backend_for(mode)
    step = get_step(compact, ("ruler", R, backend), lambda tok, pos: decode_one_token(compact, tok, pos, backend),
                    [first[:, None], torch.full((R, 1), n, dtype=torch.long, device=dev)], capture_mode(mode, dev))
    tok, pos = step.inputs  # (R, 1) each, static: mutated in place
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=dev)
    out = torch.empty(R, max_new, dtype=torch.long, device=dev)
    done = torch.zeros(R, dtype=torch.bool, device=dev)
    nxt, steps = first, max_new
    for i in range(max_new):
        out[:, i] = nxt
        if len(eos):
            done |= torch.isin(nxt, eos)
            if (i + 1) % _CHECK_EVERY == 0 and i + 1 < max_new and bool(done.all()):  # the host sync
                steps = i + 1
                break
        if i + 1 == max_new:
            break
        if i > 0:
            pos.add_(1)
        tok.copy_(nxt[:, None])
        nxt = step().argmax(-1)
        if len(eos):  # finished rows keep emitting EOS (cut below)
            nxt = torch.where(done, eos[0], nxt)
    eos_set = set(int(e) for e in eos_ids)
    rows = []
    for row in out[:, :steps].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
        rows.append(row[:cut])
    return rows


def _check_memory(compact, rows: int, slots: int, batch: int) -> None:
    """The cache holds 2 x batch rows (dense and sparse decode together): say so before a CUDA OOM."""
    from ..runtime.errors import AccelError

    if compact.device.type != "cuda":
        return
    per_row = 2 * len(compact.layers) * compact.n_kv * compact.head_dim * slots * compact.output.weight.element_size()
    free, _ = torch.cuda.mem_get_info(compact.device)
    have = free + (compact.kv.numel() * compact.kv.element_size() if compact.kv is not None else 0)
    if rows * per_row > 0.6 * have:
        raise AccelError(f"--batch {batch}: the KV cache for {rows} rows of {slots} tokens needs "
                         f"{rows * per_row / 2**30:.1f} GiB of {have / 2**30:.1f} GiB free; use a smaller --batch")


@torch.no_grad()
def ruler_suite(compact, tokenizer, tasks, lengths, patterns_for, *, samples: int = 50, batch: int = 8,
                seed: int = 0, eos_ids=(), examples: int = 2, progress=None, seconds: float | None = None,
                on_row=None, max_prefill_tokens: int = 1 << 19, dense_tail: int = 0) -> dict:
    """Dense vs forced-sparse prefill on the same RULER cases -> {"rows": per task x length, "averages"}.

    A row: RULER score (0-100) dense and sparse, sparse - dense, the share of cases whose two answers
    are identical, the sparse runs' density and share of heads run sparse, the first ``examples``
    cases' answers (to see *how* a case fails), ``wall_s`` and its per-phase ``timing``.

    ``seconds``: a wall-clock budget for the whole suite, split over the lengths in proportion to their
    token count and evenly over the tasks; a task stops adding batches once its share is spent (at
    least one batch always runs), and its row says how many cases it ran. ``on_row(row)`` is called as
    each row is done (to write results as they come). ``dense_tail``: the pack's exact last rows in the
    sparse prefill (``forced_plan``), as the runtime runs it."""
    from ..runtime.prefill import DENSE
    from ..runtime.steps import backend_for, sync
    from .ruler import TASKS, make_cases

    dev = compact.device
    mode = "graph" if dev.type == "cuda" else "eager"  # SDPA in CUDA graphs (exact prefills a batch densely)
    backend = backend_for(mode)
    spans = batches(samples, batch)
    width = max(hi - lo for lo, hi in spans)
    room = max(TASKS[t].max_new_tokens for t in tasks)
    order = [(n, t, lo, hi) for n in lengths for t in tasks for lo, hi in spans]
    following = dict(zip(order, order[1:]))
    made: dict = {}  # batches built ahead: key -> (cases, ids (B, N) on the host)

    def build(key):
        n, task, lo, hi = key
        cases = make_cases(tokenizer, task, n, hi - lo, seed, start=lo)
        return cases, torch.tensor([c.ids for c in cases], dtype=torch.long)

    rows = []
    total = sum(lengths) * len(tasks)
    for n in lengths:
        pats = patterns_for(n)
        _check_memory(compact, 2 * width, n + room, batch)
        compact.setup_cache(2 * width, n + room)
        per_call = max(1, max_prefill_tokens // n)
        for task in tasks:
            spec = TASKS[task]
            t0 = time.perf_counter()
            share = None if seconds is None else seconds * n / total
            phase = _Phases()
            stats: list = []
            sparse_plan = forced_plan(pats, stats, dense_tail)  # one plan for every batch of this task and length
            scores, same, shown, done = {"dense": [], "sparse": []}, 0, [], 0
            for lo, hi in spans:
                if share is not None and lo > 0 and time.perf_counter() - t0 > share * lo / hi:
                    break  # the next batch would likely overrun this task's share of the budget
                key = (n, task, lo, hi)
                with phase("cases"):
                    cases, ids = made.pop(key, None) or build(key)
                b = len(cases)
                with phase("dense"):
                    ids = ids.to(dev)
                    first_dense = _prefill(compact, ids, DENSE, 0, backend, per_call)  # (b,), queued on a GPU
                with phase("cases"):  # build the next batch while the GPU runs the dense prefill
                    nxt = following.get(key)
                    if nxt is not None and nxt not in made:
                        made[nxt] = build(nxt)
                with phase("dense"):
                    sync(dev)
                with phase("sparse"):
                    first_sparse = _prefill(compact, ids, sparse_plan, b, backend, per_call)
                    sync(dev)
                with phase("decode"):
                    new = _greedy(compact, torch.cat([first_dense, first_sparse]), n, spec.max_new_tokens,
                                  eos_ids, mode)
                with phase("score"):
                    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in new]
                    dense, sparse = texts[:b], texts[b:]
                    scores["dense"] += [c.score(t) for c, t in zip(cases, dense)]
                    scores["sparse"] += [c.score(t) for c, t in zip(cases, sparse)]
                    same += sum(a == s for a, s in zip(dense, sparse))
                    for c, d, s in zip(cases, dense, sparse):
                        if len(shown) < examples:
                            shown.append({"index": c.index, "answers": c.answers, "dense": d, "sparse": s})
                done += b
                if progress:
                    progress(b)
            for k in [k for k in made if k[:2] == (n, task)]:  # built ahead for batches the budget skipped
                del made[k]
            d, s = _percent(scores["dense"]), _percent(scores["sparse"])
            rows.append({"task": task, "length": n, "samples": done, "dense": d, "sparse": s, "delta": s - d,
                         "identical_answers": same / done, **sparse_summary(stats),
                         "wall_s": time.perf_counter() - t0, "timing": dict(phase.s), "examples": shown})
            if on_row is not None:
                on_row(rows[-1])
    return {"rows": rows, "averages": ruler_averages(rows)}


def _percent(xs) -> float:
    import statistics

    return 100.0 * statistics.mean(xs) if xs else float("nan")


def ruler_averages(rows: list[dict]) -> list[dict]:
    """Per length: mean over all tasks and over the needle (niah_*) tasks, dense and sparse."""
    import statistics

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


def natural_ids(tokenizer, n_tokens: int, seed: int = 0, source: str = "docs") -> list[int]:
    """At least the first ``n_tokens`` token ids of ``bench.ruler.natural_text(seed, source)`` (all of it if shorter).

    Encodes a prefix (doubling it until it holds ``n_tokens`` + 256 tokens), not the whole ~60K-100K-token
    text, cut at a paragraph break or, where there is none (the book's lines are hard-wrapped without
    blank lines), a line break: tokenizers split there, so the first ``n_tokens`` ids are the whole
    text's (the 256-token margin keeps clear of the cut)."""
    from .ruler import natural_text

    text = natural_text(seed=seed, source=source)
    chars = 6 * n_tokens + 4096
    while True:
        if chars >= len(text):
            cut = len(text)
        else:
            cut = text.rfind("\n\n", 0, chars)
            cut = cut if cut > 0 else max(text.rfind("\n", 0, chars), 1)
        ids = list(tokenizer(text[:cut], add_special_tokens=False)["input_ids"])
        if cut == len(text) or len(ids) >= n_tokens + 256:
            return ids
        chars *= 2


@torch.no_grad()
def perplexity_curve(compact, tokenizer, lengths, patterns_for, *, seed: int = 0, dense_tail: int = 0,
                     text: str = "docs") -> list[dict]:
    """Perplexity (last half) of natural long text (bench.ruler.natural_text(source=text)), dense vs
    forced sparse; each row names its text (``"text"``: book | docs)."""
    from .ruler import RulerError

    ids = natural_ids(tokenizer, max(lengths), seed, source=text) if lengths else []
    rows = []
    for n in lengths:
        if n > len(ids):
            raise RulerError(f"perplexity at {n} tokens: the built-in {text} text has only {len(ids)} tokens")
        x = torch.tensor([ids[:n]], device=compact.device)
        stats: list = []
        dense = perplexity(compact, x)
        sparse = perplexity(compact, x, patterns_for(n), stats, dense_tail=dense_tail)
        rows.append({"text": text, "length": n, "dense": dense, "sparse": sparse, "ratio": sparse / dense,
                     **sparse_summary(stats)})
    return rows
