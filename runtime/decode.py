"""``generate_plain``: plain decoding of a batch of prompts, a thin wrapper over ``Engine`` without a
drafter (the loop is ``runtime.plain``)."""

from __future__ import annotations

import torch

from .plain import GenerationResult

__all__ = ["GenerationResult", "generate_plain"]


@torch.no_grad()
def generate_plain(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, eos_ids=(), compile=None,
                   check_every: int = 16, plans=None) -> list[GenerationResult]:
    """Generate for a batch of prompts (token id lists); one GenerationResult per prompt, in order.

    ``compile``: the decode mode (None: 'exact' on CUDA, 'eager' on CPU; see ``runtime.steps``).
    ``plans``: one ``PrefillPlan`` per prompt (default dense)."""
    from .engine import Engine, Sampling

    engine = Engine(model, mode=compile)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed, tuple(eos_ids))
    return engine.generate(prompts, sampling, plans=plans, check_every=check_every)
