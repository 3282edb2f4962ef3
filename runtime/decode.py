"""``generate_plain``: plain decoding of a batch of prompts, a thin wrapper over ``Engine`` without a
drafter (the loop is ``runtime.plain``). ``generate_transformers``: the same call through transformers'
``generate`` (left-padded batch), for models the compact engine does not run; ``Generator`` and the
heads' self-distillation both use it, so both pad, seed and stop the same way."""

from __future__ import annotations

import torch

from .plain import GenerationResult

__all__ = ["GenerationResult", "generate_plain", "generate_transformers"]


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


def generate_transformers(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                          top_p: float = 1.0, seed: int = 0, eos_ids=(), pad_id: int | None = None
                          ) -> list[list[int]]:
    """Each prompt's new tokens from transformers' ``generate`` on a left-padded batch, cut after the
    first EOS (the EOS itself is kept, as in ``GenerationResult.tokens``).

    ``model``: a transformers ``*ForCausalLM``. ``pad_id`` defaults to the first EOS id (0 without one);
    the attention mask hides the padding, so its value does not change the output."""
    eos = [int(e) for e in eos_ids]
    pad = pad_id if pad_id is not None else (eos[0] if eos else 0)
    device = next(model.parameters()).device
    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)  # (B, L)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (B, L)
    kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=pad)
    if temperature > 0:
        kw.update(temperature=temperature, top_p=top_p, top_k=0)
    else:  # silence the sampling defaults a generation_config may carry
        kw.update(temperature=None, top_p=None, top_k=None)
    if eos:
        kw["eos_token_id"] = eos
    torch.manual_seed(seed)  # only matters when sampling
    with torch.inference_mode():
        seq = model.generate(input_ids=input_ids, attention_mask=attn, **kw)
    eos_set, out = set(eos), []
    for row in seq[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos_set), len(row))
        out.append(row[:cut])
    return out
