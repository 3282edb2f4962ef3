"""Token sampling without host syncs (gpt-fast's ``multinomial_sample_one_no_sync``).

- temperature == 0 -> argmax (greedy).
- otherwise softmax(logits / T), optional top-p (nucleus) filtering, then the exponential trick:
  argmax(p / E) with E ~ Exp(1) is an exact sample from p, needs no ``torch.multinomial`` (which
  syncs), and is reproducible through the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import torch

__all__ = ["check_sampling_args", "logits_to_probs", "sample", "sample_from_probs", "make_generator"]


def check_sampling_args(temperature: float, top_p: float) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filtering), got {top_p}")


def make_generator(device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """(..., V) logits -> fp32 probabilities after temperature and top-p; temperature must be > 0."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # drop a token if the mass *before* it already reaches top_p (keeps at least the top token)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(..., V) -> (...) long; exact categorical sample with no host sync."""
    # clamp: an exact 0 draw would turn p=0 tokens into 0/0 = NaN, which argmax would pick
    e = torch.empty_like(probs).exponential_(1, generator=generator).clamp_(min=1e-30)
    return torch.argmax(probs / e, dim=-1)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(..., V) logits -> (...) long token ids."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    return sample_from_probs(logits_to_probs(logits, temperature, top_p), generator)
