"""The generation pipeline behind ``accel generate``.

``Generator.load`` resolves the model and the pack (the default model picks up the pack shipped
inside ``accel.runtime``), validates the pack against the model, and builds what runs it:

- an ``Engine`` (runtime.engine) for the families of ``runtime/families``: the compact model, the
  pack's drafter when speculative decoding is on, and the decode mode, all fixed at construction;
  each prompt's prefill plan (dense / sparse) comes from ``runtime.prefill.plan_prefill``;
- transformers' ``generate`` for other architectures, with sparse prefill through the kernels'
  ``AttentionInterface`` hook and no drafter.

``run(prompts, on_completion=...)`` returns Completions (and hands each over as it is final);
``stream(prompt)`` yields one prompt's text as its tokens are accepted.

Batched plain or speculative: with a drafter, each prompt file runs whichever way the measured rule
of ``runtime.decode_rule`` estimates faster (many prompts: one plain batch; few: speculative prompt by
prompt); ``--medusa`` / ``--no-medusa`` force either way. ``decode_choice`` keeps the last decision
and ``print_stats`` names it in one line.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

from .errors import AccelError, PackError
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .pack import Pack, load_pack, validate_for_model
from .prompts import Prompt, encode_prompt

__all__ = ["GenerationConfig", "Completion", "Generator", "default_pack_path"]


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # None: speculative where the measured rule (runtime.decode_rule) says it is faster for the prompt
    # file (needs a measurement for this device: shipped defaults for CUDA; on a CPU plain decoding is
    # faster unless the pack measured otherwise); True / False: force speculative / batched plain
    medusa: bool | None = None
    dense_prefill: bool = False
    acceptance: str = "typical"  # sampling with Medusa: "typical" | "speculative"
    tree_file: str | None = None
    chat: bool | None = None
    truncate: str | None = None
    sparse_min_len: int | None = None  # None: the pack's measured threshold / the default on CUDA, off on the CPU
    compile: str | None = None  # decode mode: None ("exact" on CUDA, eager on CPU), "exact", "graph", "eager"


@dataclass
class Completion:
    id: str
    text: str
    num_prompt_tokens: int
    num_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("tokens")
        return d


def default_pack_path() -> Path | None:
    """The pack shipped for the default model, if this install has one."""
    p = Path(str(resources.files("accel.runtime").joinpath("default_pack.safetensors")))
    return p if p.is_file() else None


class Generator:
    def __init__(self, loaded: LoadedModel, pack: Pack | None, config: GenerationConfig, *,
                 transformers: bool = False):
        """``transformers=True`` forces transformers' generate even where the compact engine runs."""
        self.loaded, self.pack, self.config = loaded, pack, config
        self.tree = _load_tree(config.tree_file) if config.tree_file else None
        # why the compact engine does not run this model (one line), or None
        self.fallback_reason = "asked for transformers" if transformers else _why_unsupported(loaded.model)
        from .decode_rule import throughput_for

        dev = next(loaded.model.parameters()).device.type
        self.throughput = throughput_for(pack, dev)  # None: nothing measured for this device
        self.engine = None if self.fallback_reason else self._build_engine()
        self.decode_choice = None  # the last run's DecodeChoice (which path, and why)

    def _build_engine(self):
        from .engine import Engine
        from .model import CompactLM

        model = CompactLM.from_hf(self.loaded.model)
        drafter = None
        if self._want_drafter():
            from .drafters import drafter_class

            try:
                drafter = drafter_class(self.pack.drafter_kind).from_pack(self.pack, model, tree=self.tree)
            except ValueError as e:  # e.g. a --tree deeper than the pack has heads
                raise AccelError(f"the pack's {self.pack.drafter_kind} drafter: {e}") from None
        try:
            return Engine(model, drafter, mode=self.config.compile)
        except ValueError as e:  # an impossible decode mode for this model / device
            raise AccelError(f"--compile: {e}") from None

    def _want_drafter(self) -> bool:
        want = self.config.medusa
        if want is None:
            want = self.throughput is not None  # the rule can only choose speculative with a measurement
        return bool(want and self.pack is not None and self.pack.has_drafter)

    def choose(self, n_prompts: int):
        """-> DecodeChoice for a file of ``n_prompts``: the measured rule, or what forced the path."""
        from .decode_rule import DecodeChoice, choose_decode

        if self.engine is None:
            return DecodeChoice(False, n_prompts, forced="transformers' generate, no drafter")
        if self.engine.drafter is None:
            why = ("--no-medusa" if self.config.medusa is False else
                   "the pack has no drafter" if self.pack is None or not self.pack.has_drafter else
                   "no throughput measured on this device; plain is faster on a CPU (--medusa forces speculative)")
            return DecodeChoice(False, n_prompts, forced=why)
        kind = self.engine.drafter.kind
        if self.throughput is None:  # --medusa on a device nothing was measured on
            return DecodeChoice(True, n_prompts, forced="--medusa", drafter=kind)
        force = True if self.config.medusa else None
        return choose_decode(n_prompts, self.config.max_new_tokens, self.throughput, force=force,
                             drafter=kind, forced_by="--medusa")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, model: str | None, *, pack: str | None = None, device=None, dtype=None,
             force: bool = False, config: GenerationConfig | None = None,
             trust_remote_code: bool = False) -> "Generator":
        config = config or GenerationConfig()
        loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        pk = None
        if pack is not None:
            pk = load_pack(pack)
            validate_for_model(pk, loaded.model, loaded.fingerprint, force=force, where=f"pack {pack}")
        elif loaded.name == DEFAULT_MODEL and default_pack_path() is not None:
            pk = load_pack(default_pack_path())
            try:
                validate_for_model(pk, loaded.model, loaded.fingerprint, where="the shipped default pack")
            except PackError:
                pk = None  # e.g. a different release of the embedded GGUF: run plain rather than fail
        return cls(loaded, pk, config)

    @property
    def use_medusa(self) -> bool:
        return self.engine is not None and self.engine.drafter is not None

    @property
    def use_sparse(self) -> bool:
        return bool(not self.config.dense_prefill and self.pack is not None and self.pack.has_patterns)

    # -- running ------------------------------------------------------------------------------
    def encode(self, prompts: list[Prompt]) -> list[list[int]]:
        c = self.config
        return [encode_prompt(self.loaded.tokenizer, p, chat=c.chat, context_length=self.loaded.context_length,
                              max_new_tokens=c.max_new_tokens, truncate=c.truncate) for p in prompts]

    def run(self, prompts: list[Prompt], on_completion: Callable[[Completion], None] | None = None
            ) -> list[Completion]:
        """Completions in prompt order; ``on_completion`` is called with each one as it is final."""
        ids = self.encode(prompts)
        tok = self.loaded.tokenizer
        done: list[Completion | None] = [None] * len(prompts)

        def finish(row: int, r: dict) -> None:
            p, x = prompts[row], ids[row]
            done[row] = Completion(p.id, tok.decode(r["tokens"], skip_special_tokens=True), len(x),
                                   len(r["tokens"]), r["tokens"], r.get("stats", {}))
            if on_completion is not None:
                on_completion(done[row])

        self.decode_choice = self.choose(len(prompts))
        if self.engine is not None:
            self._run_engine(ids, finish, self.decode_choice.speculative)
        else:
            for row, r in enumerate(self._run_hf(ids)):
                finish(row, r)
        return done

    def stream(self, prompt: Prompt) -> Iterator[str]:
        """One prompt's text, piece by piece as tokens are accepted (transformers fallback: at the end)."""
        [ids] = self.encode([prompt])
        tok = self.loaded.tokenizer
        if self.engine is None:
            yield tok.decode(self._run_hf([ids])[0]["tokens"], skip_special_tokens=True)
            return
        eos, toks, text = set(self.loaded.eos_ids), [], ""
        self.decode_choice = self.choose(1)
        for chunk in self.engine.stream([ids], self._sampling(), plans=[self._plan(ids)], check_every=1,
                                        speculative=self.decode_choice.speculative):
            toks += [t for t in chunk.tokens if t not in eos]
            # decode the whole prefix each time: a character may span tokens
            now = tok.decode(toks, skip_special_tokens=True)
            if len(now) > len(text) and not now.endswith("\ufffd"):
                yield now[len(text):]
                text = now

    def _sampling(self):
        from .engine import Sampling

        c = self.config
        acceptance = "greedy" if c.temperature == 0 else c.acceptance
        return Sampling(c.max_new_tokens, c.temperature, c.top_p, c.seed, tuple(self.loaded.eos_ids), acceptance)

    def _plan(self, ids: list[int]):
        from .prefill import plan_prefill

        return plan_prefill(self.pack, len(ids), self.engine.model.device, self.config.sparse_min_len,
                            dense=not self.use_sparse)

    def _run_engine(self, ids: list[list[int]], finish, speculative: bool) -> None:
        engine = self.engine
        plans = [self._plan(x) for x in ids]
        eos = set(self.loaded.eos_ids)
        name = engine.path_name(speculative)

        def on_result(row, r):
            toks = r.tokens[:-1] if r.tokens and r.tokens[-1] in eos else r.tokens
            stats = {"engine": name, "decode_mode": engine.mode, "prefill_ms": r.prefill_s * 1e3,
                     "tokens_per_s": r.tokens_per_s, "wall_tokens_per_s": r.wall_tokens_per_s,
                     "attention_density": plans[row].work_share(len(ids[row]), engine.model.head_dim)}
            if r.accept_lengths:
                stats["accepted_per_step"] = sum(r.accept_lengths) / len(r.accept_lengths)
                stats["steps"] = len(r.accept_lengths)
            finish(row, {"tokens": toks, "stats": stats})

        engine.generate(ids, self._sampling(), plans=plans, on_result=on_result, speculative=speculative)

    def _strip_eos(self, toks: list[int]) -> list[int]:
        eos = set(self.loaded.eos_ids)
        for i, t in enumerate(toks):
            if t in eos:
                return toks[:i]
        return toks

    def _run_hf(self, ids: list[list[int]]) -> list[dict]:
        """transformers' generate, batched with left padding; sparse prefill through the hook."""
        model, tok, c = self.loaded.model, self.loaded.tokenizer, self.config
        dev = next(model.parameters()).device
        from .prefill import layer_patterns, sparse_threshold

        threshold = sparse_threshold(self.pack, dev, c.sparse_min_len) if self.use_sparse else None
        if threshold is not None and max(map(len, ids)) >= threshold:
            from ..kernels import enable_sparse_prefill

            # same threshold and length scaling as the compact engine; the hook keeps short/padded/decode steps dense
            enable_sparse_prefill(model, layer_patterns(self.pack, max(map(len, ids))), min_len=threshold)
        from .decode import generate_transformers

        pad = tok.pad_token_id if tok.pad_token_id is not None else self.loaded.eos_ids[0]
        t0 = time.perf_counter()
        seqs = generate_transformers(model, ids, c.max_new_tokens, c.temperature, c.top_p, c.seed,
                                     self.loaded.eos_ids, pad)
        wall = time.perf_counter() - t0
        outs = [self._strip_eos(row) for row in seqs]
        n = sum(map(len, outs))
        return [{"tokens": o, "stats": {"engine": "transformers", "fallback": self.fallback_reason, "wall_s": wall,
                                        "tokens_per_s": n / wall if wall else 0.0}} for o in outs]

    def print_stats(self, completions: list[Completion], console) -> None:
        from rich.table import Table

        if self.decode_choice is not None:
            console.print(self.decode_choice.line(), markup=False, highlight=False)
        t = Table(title="generation stats")
        keys = ["engine", "decode_mode", "prefill_ms", "wall_tokens_per_s", "tokens_per_s", "accepted_per_step",
                "attention_density"]
        t.add_column("id")
        for k in keys:
            t.add_column(k, justify="right")
        for c in completions:
            s = c.stats
            t.add_row(c.id, *(_fmt(s.get(k)) for k in keys))
        console.print(t)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _why_unsupported(model) -> str | None:
    from .families import why_unsupported

    return why_unsupported(model)


def _load_tree(path: str) -> list[tuple[int, ...]]:
    try:
        raw = json.loads(Path(path).read_text())
        tree = [tuple(int(i) for i in node) for node in raw]
    except (OSError, ValueError, TypeError) as e:
        raise AccelError(f"--tree {path}: expected a JSON list of paths like [[0], [0, 0], [1]] ({e})") from None
    if not tree or any(len(p) == 0 or min(p) < 0 for p in tree):
        raise AccelError(f"--tree {path}: paths must be non-empty lists of non-negative top-k indices")
    return tree
