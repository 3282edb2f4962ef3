"""``Engine``: the compact model, a drafter (or none) and the decode mode, fixed at construction.

The engine *steps*: ``stream`` is a generator of ``Chunk``s, the tokens of one prompt accepted since
its last chunk; a prompt's last chunk carries its ``GenerationResult``. ``generate`` collects them.
Without a drafter the prompts decode as one batch (each prefilled alone at its own length, with its
own prefill plan, see ``runtime.decode``); with one, prompts run one after another through the
speculative loop (``runtime.speculative``), whose captured step is reused across requests, unless
``stream(..., speculative=False)`` asks for the plain batch (``runtime.decode_rule`` decides which is
faster for a prompt file).

``Generator`` (runtime.generate) owns one Engine; ``generate_plain`` / ``generate_medusa`` build one
per call for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plain import GenerationResult, plain_stream
from .prefill import DENSE
from .sampling import check_sampling_args
from .steps import backend_for, resolve_mode
from .verify import ACCEPTANCE

__all__ = ["Engine", "Sampling"]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    eos_ids: tuple = ()
    acceptance: str = "greedy"  # with a drafter and temperature > 0: "typical" | "speculative"
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3

    def check(self) -> None:
        check_sampling_args(self.temperature, self.top_p)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.acceptance not in ACCEPTANCE:
            raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {self.acceptance!r}")


class Engine:
    def __init__(self, model, drafter=None, *, mode=None):
        self.model, self.drafter = model, drafter
        self.mode = resolve_mode(mode, model.device, model)  # 'exact' | 'graph' | 'eager'
        self.backend = backend_for(self.mode)

    @property
    def name(self) -> str:
        return "compact" if self.drafter is None else f"compact+{self.drafter.kind}"

    def path_name(self, speculative: bool | None = None) -> str:
        """The engine's name for the path ``stream(..., speculative=)`` runs."""
        return self.name if self._speculative(speculative) else "compact"

    def _speculative(self, speculative: bool | None) -> bool:
        if speculative and self.drafter is None:
            raise ValueError("speculative decoding needs an Engine built with a drafter")
        return self.drafter is not None if speculative is None else bool(speculative)

    def stream(self, prompts: list[list[int]], sampling: Sampling, *, plans=None, check_every: int | None = None,
               speculative: bool | None = None):
        """Yield ``Chunk``s (row = index into ``prompts``) as tokens are accepted. ``speculative``: None
        decodes speculatively iff the engine has a drafter; False runs the plain batch even then (the
        faster path for many prompts, ``runtime.decode_rule``)."""
        sampling.check()
        spec = self._speculative(speculative)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty token id lists")
        plans = plans or [DENSE] * len(prompts)
        s = sampling
        # (the loops are @torch.no_grad() generators: grad mode is switched per resume, not across yields)
        if not spec:
            yield from plain_stream(self.model, prompts, s.max_new_tokens, mode=self.mode,
                                    temperature=s.temperature, top_p=s.top_p, seed=s.seed, eos_ids=s.eos_ids,
                                    plans=plans, check_every=check_every or 16)
            return
        from .speculative import speculative_stream

        # size the cache once for the file's longest prompt (speculative_stream's own size for it): a
        # longer prompt later in the file would otherwise re-allocate it mid-file, which drops every
        # captured step (the cached graphs alias the cache) and re-captures the next (~50 ms on the H200)
        depth, n1 = self.drafter.bounds()
        ce = check_every or 4
        self.model.setup_cache(1, max(map(len, prompts)) + s.max_new_tokens + (ce + 1) * (depth + 1) + n1)
        for row, (p, plan) in enumerate(zip(prompts, plans)):
            yield from speculative_stream(
                self.model, self.drafter, p, s.max_new_tokens, mode=self.mode, temperature=s.temperature,
                top_p=s.top_p, seed=s.seed, eos_ids=s.eos_ids, acceptance=s.acceptance,
                posterior_threshold=s.posterior_threshold, posterior_alpha=s.posterior_alpha, plan=plan,
                check_every=check_every or 4, row=row)

    def generate(self, prompts, sampling: Sampling, *, plans=None, check_every: int | None = None,
                 on_result=None, speculative: bool | None = None) -> list[GenerationResult]:
        """All results, in prompt order; ``on_result(row, result)`` as each prompt finishes."""
        results: list[GenerationResult | None] = [None] * len(prompts)
        for chunk in self.stream(prompts, sampling, plans=plans, check_every=check_every, speculative=speculative):
            if chunk.done:
                results[chunk.row] = chunk.result
                if on_result is not None:
                    on_result(chunk.row, chunk.result)
        return results
