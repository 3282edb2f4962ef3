"""The generation pipeline behind ``accel generate``.

``Generator.load`` resolves the model and the pack (the default model picks up the pack shipped
inside ``accel.runtime``), validates the pack against the model, and picks an engine:

- the compact engine (``runtime.llama`` + ``runtime.decode`` / ``runtime.medusa``) for the Llama
  family: static KV cache, CUDA graphs, sparse prefill through ``accel.kernels``, Medusa tree decoding;
- transformers' ``generate`` for other architectures, with sparse prefill through the kernels'
  ``AttentionInterface`` hook and no Medusa.

Plain decoding runs all prompts of a file as one batch; Medusa runs them one after another.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

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
    medusa: bool | None = None  # None: on when the model runs on CUDA (on a CPU plain decoding is faster)
    dense_prefill: bool = False
    acceptance: str = "typical"  # sampling with Medusa: "typical" | "speculative"
    tree_file: str | None = None
    chat: bool | None = None
    truncate: str | None = None
    sparse_min_len: int | None = None  # None: the measured default on CUDA, off on the CPU
    compile: str | None = None  # decode steps: None ("exact" on CUDA, eager on CPU), "exact", "graph", "inductor", "eager"


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
    def __init__(self, loaded: LoadedModel, pack: Pack | None, config: GenerationConfig):
        self.loaded, self.pack, self.config = loaded, pack, config
        self.engine = _pick_engine(loaded.model)
        self.tree = _load_tree(config.tree_file) if config.tree_file else None
        self._compact = None
        self._heads = None

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
        want = self.config.medusa
        if want is None:
            want = next(self.loaded.model.parameters()).device.type == "cuda"
        return bool(want and self.pack is not None and self.pack.has_heads
                    and self.engine == "compact")

    @property
    def use_sparse(self) -> bool:
        return bool(not self.config.dense_prefill and self.pack is not None and self.pack.has_patterns)

    # -- running ------------------------------------------------------------------------------
    def encode(self, prompts: list[Prompt]) -> list[list[int]]:
        c = self.config
        return [encode_prompt(self.loaded.tokenizer, p, chat=c.chat, context_length=self.loaded.context_length,
                              max_new_tokens=c.max_new_tokens, truncate=c.truncate) for p in prompts]

    def run(self, prompts: list[Prompt],
            on_completion: Callable[[Completion], None] | None = None) -> list[Completion]:
        """Generate every prompt. ``on_completion(c)`` is called as each completion is final (Medusa runs
        prompts one by one, so each is handed over as soon as it is done; a batch hands all over at its end),
        so a caller can save finished work before a later prompt fails or is interrupted."""
        ids = self.encode(prompts)
        tok = self.loaded.tokenizer
        done: list[Completion] = []

        def finish(chunk_prompts, chunk_ids, results):
            for p, x, r in zip(chunk_prompts, chunk_ids, results):
                c = Completion(p.id, tok.decode(r["tokens"], skip_special_tokens=True), len(x), len(r["tokens"]),
                               r["tokens"], r.get("stats", {}))
                done.append(c)
                if on_completion is not None:
                    on_completion(c)

        if self.engine == "compact" and self.use_medusa:  # one prompt at a time anyway: hand each over
            for p, x in zip(prompts, ids):
                finish([p], [x], self._run_compact([x]))
        elif self.engine == "compact":
            finish(prompts, ids, self._run_compact(ids))
        else:
            finish(prompts, ids, self._run_hf(ids))
        return done

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
        from .engine import layer_patterns, sparse_min_len

        threshold = sparse_min_len(self, dev) if self.use_sparse else None
        if threshold is not None and max(map(len, ids)) >= threshold:
            from ..kernels import enable_sparse_prefill

            # same threshold and length scaling as the compact engine; the hook keeps short/padded/decode steps dense
            enable_sparse_prefill(model, layer_patterns(self.pack, max(map(len, ids))), min_len=threshold)
        width = max(map(len, ids))
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.loaded.eos_ids[0]
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=dev)
        attn = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=dev)
        torch.manual_seed(c.seed)
        kw = dict(do_sample=c.temperature > 0, max_new_tokens=c.max_new_tokens, pad_token_id=pad,
                  eos_token_id=self.loaded.eos_ids)
        if c.temperature > 0:
            kw.update(temperature=c.temperature, top_p=c.top_p, top_k=0)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        t0 = time.perf_counter()
        with torch.inference_mode():
            seq = model.generate(input_ids=input_ids, attention_mask=attn, **kw)
        wall = time.perf_counter() - t0
        outs = [self._strip_eos(row[width:].tolist()) for row in seq]
        n = sum(map(len, outs))
        return [{"tokens": o, "stats": {"engine": "transformers", "wall_s": wall,
                                        "tokens_per_s": n / wall if wall else 0.0}} for o in outs]

    def _run_compact(self, ids: list[list[int]]) -> list[dict]:
        from . import engine

        return engine.run(self, ids)

    def print_stats(self, completions: list[Completion], console) -> None:
        from rich.table import Table

        t = Table(title="generation stats")
        keys = ["engine", "decode_mode", "prefill_ms", "tokens_per_s", "accepted_per_step", "attention_density"]
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


def _pick_engine(model) -> str:
    try:
        from . import engine  # noqa: F401
        from .llama import supports
    except ImportError:
        return "hf"
    return "compact" if supports(model) else "hf"


def _load_tree(path: str) -> list[tuple[int, ...]]:
    try:
        raw = json.loads(Path(path).read_text())
        tree = [tuple(int(i) for i in node) for node in raw]
    except (OSError, ValueError, TypeError) as e:
        raise AccelError(f"--tree {path}: expected a JSON list of paths like [[0], [0, 0], [1]] ({e})") from None
    if not tree or any(len(p) == 0 or min(p) < 0 for p in tree):
        raise AccelError(f"--tree {path}: paths must be non-empty lists of non-negative top-k indices")
    return tree
