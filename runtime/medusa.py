"""``generate_medusa``: Medusa tree decoding of one prompt, a thin wrapper over ``Engine`` with a
``MedusaDrafter`` (the loop is ``runtime.speculative``, verification ``runtime.verify``)."""

from __future__ import annotations

import torch

from .plain import GenerationResult

__all__ = ["generate_medusa"]


@torch.no_grad()
def generate_medusa(model, heads, prompt_ids: list[int], max_new_tokens: int, tree=None,
                    temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, eos_ids=(),
                    acceptance: str = "greedy", posterior_threshold: float = 0.09,
                    posterior_alpha: float = 0.3, compile=None, check_every: int = 4,
                    plan=None) -> GenerationResult:
    """Medusa decoding for one prompt. ``tree``: list of paths, a TreeBuffers, or None (default tree).

    Returns a GenerationResult whose ``accept_lengths`` are the tokens emitted per verify step.
    """
    from .drafters.medusa import MedusaDrafter
    from .engine import Engine, Sampling

    if not prompt_ids or max_new_tokens < 1:
        raise ValueError("need a non-empty prompt and max_new_tokens >= 1")
    drafter = MedusaDrafter(heads, tree, device=model.device)
    engine = Engine(model, drafter, mode=compile)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed, tuple(eos_ids), acceptance,
                        posterior_threshold, posterior_alpha)
    return engine.generate([prompt_ids], sampling, plans=[plan] if plan else None, check_every=check_every)[0]
