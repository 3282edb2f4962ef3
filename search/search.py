"""Offline pattern search: for every (layer, head), the sparse pattern the runtime will use.

Design points:
* One forward pass of the model over the calibration input.  The kernels' transformers hook
  (`kernels.hook.capture_qk`) hands each layer's post-RoPE q/k to the search, which searches that
  layer's heads right there, and the layer returns transformers' own SDPA output, so the next layer
  sees exactly the dense model.  Only one layer's q/k is alive at a time, and scoring works on row
  chunks: never all heads' N×N.
* Candidates per budget have equal kernel-aware cost (`cost.candidates_for_budget`: every registered
  pattern's `search_candidates`).  Each candidate is applied to all heads with `kernels.build_index` —
  the same online estimation the runtime runs — and heads of a pattern whose cost depends on the data
  (vertical-slash) whose *measured* cost overshoots the budget are shrunk and re-indexed.  The winner
  per head is the candidate with the highest attention-mass recall over the late rows; near-ties go to
  the pattern with the lower `tie_rank` (static patterns first).
* `--target-recall R`: a budget ladder is searched; a head gets the cheapest budget whose best
  candidate reaches R, and `dense` if none does.  With a single budget, `dense_below` (default 0: never,
  like MInference) turns heads whose best recall is below it into `dense`.
* Retrieval: for heads whose question rows (the last `last_q`: the calibration sample's question, which
  the online estimation reads too) put >= `far_min` of their mass on far keys, the score is
  (1-w)·recall + w·far-key recall of those rows (`score.far_recall_of_indexes`, w = `retrieval_weight`):
  on the real Qwen2.5-Coder-0.5B, mass recall alone picked A-shape everywhere and lost every needle.
* The stored score (4th field) is the winner's recall; `density` is its measured kernel cost / dense.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from ..kernels import PATTERNS, HeadPattern, SparseIndex, build_index, to_minference, vertical_slash_scores
from ..kernels.hook import capture_qk
from ..kernels.patterns import Dense, VerticalSlash
from ..kernels.scaling import SCALING_RULES, scale_layers, scale_pattern  # noqa: F401 (re-exported)
from ..runtime.errors import AccelError, ModelError

from .cost import candidates_for_budget, cost_tolerance, dense_cost, head_costs
from .score import far_recall_of_indexes, recall_of_indexes, score_rows

__all__ = ["SearchConfig", "SearchResult", "SearchError", "run_search", "search_layer", "validate",
           "scale_pattern", "scale_layers", "DEFAULT_LADDER", "SCALING_RULES"]

DEFAULT_LADDER = (0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7)
RECALL_TIE = 1e-3


class SearchError(AccelError):
    """The search cannot run as asked (memory, lengths, settings)."""


@dataclass
class SearchConfig:
    seq_len: int
    budget: float = 0.1                 # fraction of causal dense cost at seq_len
    target_recall: float | None = None  # if set: cheapest budget of `ladder` reaching it, per head
    ladder: tuple = DEFAULT_LADDER
    block: int = 64                     # kernel BLOCK_M = BLOCK_N
    last_q: int = 64                    # queries the online vertical-slash estimate uses
    score_frac: float = 0.125           # score over the last 12.5% of rows (>= 64 rows)
    dense_below: float = 0.0            # budget mode: best recall below this -> dense
    scaling: str = "proportional"       # rule the runtime uses to adapt sizes to the prompt length
    retrieval_weight: float = 0.5       # weight of the question rows' far-key recall in a head's score
    far_min: float = 0.02               # ... for heads whose question rows put at least this share far
    dense_tail: int = 0                 # the runtime computes a prompt's last this many rows exactly
    kinds: tuple | None = None          # candidate pattern kinds (None: every registered sparse kind)

    def check(self) -> None:
        if self.target_recall is None and not 0.0 < self.budget <= 1.0:
            raise SearchError(f"--budget {self.budget} must be in (0, 1] (a fraction of dense attention cost)")
        if self.target_recall is not None and not 0.0 < self.target_recall < 1.0:
            raise SearchError(f"--target-recall {self.target_recall} must be in (0, 1), e.g. 0.95")
        if self.block < 16 or self.block & (self.block - 1):
            raise SearchError(f"--block {self.block} must be a power of two >= 16 (64 is what the kernels use)")
        if self.seq_len < 2 * self.block:
            raise SearchError(f"--seq-len {self.seq_len} is too short to search: use at least {2 * self.block} "
                              f"tokens (sparsity pays off from a few thousand)")
        if not 0.0 <= self.retrieval_weight <= 1.0:
            raise SearchError(f"--retrieval-weight {self.retrieval_weight} must be in [0, 1] (0: attention-mass recall only)")
        if self.scaling not in SCALING_RULES:
            raise SearchError(f"scaling rule {self.scaling!r} unknown: use one of {SCALING_RULES}")
        if self.kinds is not None:
            sparse = [n for n, k in PATTERNS.items() if not k.dense]
            bad = [k for k in self.kinds if k not in sparse]
            if bad or not self.kinds:
                raise SearchError(f"--kinds {','.join(self.kinds)}: use one or more of {', '.join(sparse)} "
                                  f"(comma-separated; dense is always the fallback, not a candidate)")
        if not 0 <= self.dense_tail <= self.seq_len:
            raise SearchError(f"--dense-tail {self.dense_tail} must be in [0, --seq-len] (rows, e.g. 64)")

    @property
    def budgets(self) -> tuple:
        return tuple(sorted(self.ladder)) if self.target_recall is not None else (self.budget,)


@dataclass
class SearchResult:
    layers: list                        # [layer][head] HeadPattern (score = recall)
    density: list                       # [layer][head] measured kernel cost / causal dense cost
    config: SearchConfig
    seconds: float = 0.0
    candidates_per_layer: int = 0
    validation: dict = field(default_factory=dict)

    def minference(self) -> list[dict]:
        return to_minference(self.layers)

    def summary(self) -> dict:
        rec = [p.score for layer in self.layers for p in layer]
        den = [d for layer in self.density for d in layer]
        counts: dict[str, int] = {}
        for layer in self.layers:
            for p in layer:
                counts[p.name] = counts.get(p.name, 0) + 1
        return {"mean_recall": sum(rec) / len(rec), "min_recall": min(rec),
                "mean_density": sum(den) / len(den), "counts": counts}

    def patterns_info(self) -> dict:
        c = self.config
        return {
            "seq_len": c.seq_len, "budget": None if c.target_recall is not None else c.budget,
            "target_recall": c.target_recall, "ladder": list(c.budgets) if c.target_recall is not None else None,
            "scaling": c.scaling, "block": c.block, "last_q": c.last_q,
            "score": (f"attention-mass recall, mean over the last {c.score_frac:.1%} of rows (>= 64)"
                      + (f"; x{1 - c.retrieval_weight:g} + {c.retrieval_weight:g} x far-key recall of the last "
                         f"{c.last_q} rows for heads putting >= {c.far_min:g} of their mass far"
                         if c.retrieval_weight > 0 else "")),
            "retrieval_weight": c.retrieval_weight, "far_min": c.far_min,
            "dense_below": c.dense_below, "dense_tail": c.dense_tail,
            "kinds": list(c.kinds) if c.kinds is not None else None,
            "density": [[round(d, 4) for d in layer] for layer in self.density],
            **{k: v for k, v in self.summary().items()},
        }


# --------------------------------------------------------------------------------------------
# one layer
# --------------------------------------------------------------------------------------------
def _shrink(p: HeadPattern, f: float) -> HeadPattern:
    return HeadPattern(p.name, int(p.size_1 * f), max(1, int(p.size_2 * f)), p.score)


class _VerticalSlashCache:
    """The kernels' vertical-slash estimation for many (v, s) settings of one layer: the last-q softmax
    and its column / diagonal sums (`kernels.vertical_slash_scores`) are computed once, then each setting
    is the pattern's own top-k and index conversion (`VerticalSlash.index_from_scores`) — the runtime's
    code, only the repeated work is shared."""

    def __init__(self, q, k, last_q: int, scale: float, block: int):
        self.col, self.diag = vertical_slash_scores(q, k, last_q, scale)              # (B, Hq, N) x2
        self.n, self.block = q.shape[2], block
        self.kind = PATTERNS[VerticalSlash.name]

    def index(self, pats) -> SparseIndex:
        return self.kind.index_from_scores(self.col, self.diag, pats, self.n, self.block, self.block)


def _candidate_index(q, k, cand: HeadPattern, target: float, tol: float, cfg: SearchConfig, scale,
                     vs_cache=None):
    """Index + per-head patterns + measured per-head cost for one candidate applied to all heads."""
    Hq, D = q.shape[1], q.shape[-1]
    pats = [cand] * Hq
    for _ in range(4):
        if vs_cache is not None and cand.kind is vs_cache.kind:
            idx = vs_cache.index(pats)
        else:
            idx = build_index(q, k, pats, cfg.block, cfg.block, last_q=cfg.last_q, scale=scale)
        costs = head_costs(idx, D) / q.shape[0]
        over = costs > target + tol
        if cand.kind.exact_cost or not bool(over.any()):
            break
        # the chosen diagonals are scattered (cost more tiles than a band): shrink those heads only
        pats = [_shrink(p, 0.97 * target / float(c)) if o else p for p, c, o in zip(pats, costs, over)]
    return idx, pats, costs


def search_layer(q: torch.Tensor, k: torch.Tensor, cfg: SearchConfig, scale: float | None = None):
    """Best pattern per query head of one layer.  q (B,Hq,N,D), k (B,Hkv,N,D) post-RoPE.

    -> (patterns [Hq] with score = recall, density [Hq], number of candidates scored)."""
    B, Hq, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    full = dense_cost(N, D, cfg.block)
    tol = cost_tolerance(N, D, cfg.block)
    entries = []  # (budget, per-head patterns, per-head cost, index)
    vs_cache = _VerticalSlashCache(q, k, cfg.last_q, scale, cfg.block)
    for b in cfg.budgets:
        target = b * full
        for cand in candidates_for_budget(N, D, b, cfg.block):
            if cfg.kinds is not None and cand.name not in cfg.kinds:
                continue
            idx, pats, costs = _candidate_index(q, k, cand, target, tol, cfg, scale, vs_cache)
            entries.append((b, pats, costs, idx))
    if not entries:
        raise SearchError(f"no candidate of --kinds {','.join(cfg.kinds or ())} fits a budget of "
                          f"{', '.join(f'{b:g}' for b in cfg.budgets)} at {N} tokens: raise --budget or allow more kinds")
    rows = score_rows(N, cfg.score_frac)
    max_elems = (1 << 27) if q.is_cuda else (1 << 24)
    rec = recall_of_indexes(q, k, [e[3] for e in entries], rows, scale, max_elems=max_elems)  # (C, Hq)
    if cfg.retrieval_weight > 0:
        # the question rows (the last `last_q`, which the online estimation reads too) must keep their
        # far keys: mass recall alone is blind to a lost needle (see score.far_recall_of_indexes)
        far, share = far_recall_of_indexes(q, k, [e[3] for e in entries], slice(max(0, N - cfg.last_q), N),
                                           scale, max_elems=max_elems)               # (C, Hq), (Hq,)
        w = torch.where(share >= cfg.far_min, cfg.retrieval_weight, 0.0).to(rec.dtype)  # (Hq,)
        rec = (1 - w) * rec + w * far

    out, dens = [], []
    for h in range(Hq):
        chosen = None
        for b in cfg.budgets:
            ids = [i for i, e in enumerate(entries) if e[0] == b]
            if not ids:   # --kinds left no candidate at this budget of the ladder
                continue
            cap = max(b * full, min(float(entries[i][2][h]) for i in ids)) + tol
            ok = [i for i in ids if float(entries[i][2][h]) <= cap]
            top = max(float(rec[i, h]) for i in ok)
            # near-ties (within RECALL_TIE) go to the static patterns (no online estimation at run
            # time), then to the cheaper measured cost
            near = [i for i in ok if float(rec[i, h]) >= top - RECALL_TIE]
            best = min(near, key=lambda i: (entries[i][1][h].kind.tie_rank, float(entries[i][2][h]),
                                            -float(rec[i, h])))
            chosen = best
            if cfg.target_recall is None or float(rec[best, h]) >= cfg.target_recall:
                break
        else:
            if cfg.target_recall is not None:
                chosen = None  # no budget of the ladder reaches the target: dense
        r = float(rec[chosen, h]) if chosen is not None else 1.0
        if chosen is None or (cfg.target_recall is None and r < cfg.dense_below):
            out.append(HeadPattern(Dense.name, 0, 0, 1.0))
            dens.append(1.0)
            continue
        p = entries[chosen][1][h]
        out.append(HeadPattern(p.name, p.size_1, p.size_2, round(r, 5)))
        dens.append(float(entries[chosen][2][h]) / full)
    return out, dens, len(entries)


# --------------------------------------------------------------------------------------------
# the whole model: capture q/k per layer inside one forward pass
# --------------------------------------------------------------------------------------------
def _decoder(model):
    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    return dec if dec is not None else model


def _model_shape(model):
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    L, Hq = getattr(cfg, "num_hidden_layers", None), getattr(cfg, "num_attention_heads", None)
    if not L or not Hq:
        raise ModelError(f"{type(model).__name__}: no num_hidden_layers / num_attention_heads in its config; "
                         f"search-patterns supports decoder-only attention models (Llama, Qwen2, Mistral, ...)")
    return L, Hq


@contextlib.contextmanager
def _oom_as_error(what: str):
    try:
        yield
    except AccelError:
        raise
    except Exception as e:  # torch.OutOfMemoryError and allocator RuntimeErrors alike
        if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
            raise SearchError(f"out of memory {what}: lower --seq-len (patterns scale to longer prompts), "
                              f"or free the GPU / use a bigger one") from None
        raise


def run_search(model, input_ids: torch.Tensor, cfg: SearchConfig, on_layer=None) -> SearchResult:
    """Search every layer's head patterns on `input_ids` (1, N).  `on_layer(i, L, patterns, density)` is
    called after each layer (progress)."""
    cfg.check()
    L, Hq = _model_shape(model)
    N = input_ids.shape[-1]
    if N != cfg.seq_len:
        raise SearchError(f"calibration input has {N} tokens, the config says --seq-len {cfg.seq_len}")
    layers: list = [None] * L
    dens: list = [None] * L
    ncand = [0]
    seen = []

    def on_qk(li, q, k, scaling):
        if li is None or li >= L:
            raise ModelError(f"{type(model).__name__}: attention modules have no usable layer_idx; "
                             f"search-patterns supports Llama / Qwen2 / Mistral-style models")
        if q.shape[1] != Hq:
            raise ModelError(f"layer {li}: {q.shape[1]} query heads in attention, {Hq} in the config")
        pats, d, nc = search_layer(q.detach(), k.detach(), cfg, scaling)
        layers[li], dens[li], ncand[0] = pats, d, nc
        seen.append(li)
        if on_layer is not None:
            on_layer(li, L, pats, d)

    t0 = time.perf_counter()
    dev = next(model.parameters()).device
    with _oom_as_error(f"searching at --seq-len {N} on {dev}"), torch.no_grad(), capture_qk(model, on_qk):
        _decoder(model)(input_ids=input_ids.to(dev), use_cache=False)
    if sorted(set(seen)) != list(range(L)):
        raise ModelError(
            f"{type(model).__name__}: only {len(set(seen))} of {L} layers passed q/k through transformers' "
            f"AttentionInterface, so there is nothing to search; supported: Llama, Qwen2, Mistral-style models")
    return SearchResult(layers, dens, cfg, time.perf_counter() - t0, ncand[0])


# --------------------------------------------------------------------------------------------
# validation: dense vs sparse next-token predictions on held-out text
# --------------------------------------------------------------------------------------------
def _late_logits_stats(model, h_dense, h_sparse, r0: int, chunk: int = 256):
    head = model.get_output_embeddings()
    agree, kl, n = 0, 0.0, 0
    for a in range(r0, h_dense.shape[1], chunk):
        b = min(h_dense.shape[1], a + chunk)
        ld = torch.log_softmax(head(h_dense[:, a:b]).float(), -1)               # (B, R, V)
        ls = torch.log_softmax(head(h_sparse[:, a:b]).float(), -1)
        agree += int((ld.argmax(-1) == ls.argmax(-1)).sum())
        kl += float((ld.exp() * (ld - ls)).sum(-1).clamp_min(0).sum())
        n += ld.shape[0] * ld.shape[1]
    return agree / n, kl / n


def validate(model, input_ids: torch.Tensor, result: SearchResult, rows_frac: float = 0.25) -> dict:
    """Dense vs sparse (the searched patterns through the kernels' hook) on held-out `input_ids` (1, N):
    top-1 next-token agreement and mean KL(dense ‖ sparse) over the last `rows_frac` of positions."""
    from ..kernels import disable_sparse_prefill, enable_sparse_prefill

    dev = next(model.parameters()).device
    ids = input_ids.to(dev)
    N = ids.shape[-1]
    dec = _decoder(model)
    t0 = time.perf_counter()
    with _oom_as_error(f"validating at --seq-len {N} on {dev}"), torch.no_grad():
        h_dense = dec(input_ids=ids, use_cache=False).last_hidden_state
        enable_sparse_prefill(model, result.layers, min_len=1, block_m=result.config.block,
                              block_n=result.config.block, last_q=result.config.last_q)
        try:
            h_sparse = dec(input_ids=ids, use_cache=False).last_hidden_state
        finally:
            disable_sparse_prefill(model)
        r0 = N - max(1, int(round(rows_frac * N)))
        agree, kl = _late_logits_stats(model, h_dense, h_sparse, r0)
    return {"top1_agreement": round(agree, 5), "kl": round(kl, 6), "rows": N - r0, "seq_len": N,
            "mean_density": round(result.summary()["mean_density"], 5),
            "seconds": round(time.perf_counter() - t0, 2)}
