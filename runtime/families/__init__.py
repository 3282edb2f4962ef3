"""Model families the compact model runs; one file per family, listed once in ``FAMILIES``."""

from __future__ import annotations

from . import llama, mistral, qwen2, qwen3
from .base import Family, LayerWeights, ModelArgs, rope_inv_freq, rope_params

__all__ = ["FAMILIES", "Family", "LayerWeights", "ModelArgs", "family_for", "why_unsupported", "rope_inv_freq",
           "rope_params"]

FAMILIES: dict[str, Family] = {f.model_type: f for f in (llama.FAMILY, mistral.FAMILY, qwen2.FAMILY, qwen3.FAMILY)}


def family_for(hf_model) -> Family | None:
    return FAMILIES.get(getattr(getattr(hf_model, "config", None), "model_type", None))


def why_unsupported(hf_model) -> str | None:
    """None if the compact model can run this transformers model exactly, else one line why not."""
    fam = family_for(hf_model)
    if fam is None:
        mt = getattr(getattr(hf_model, "config", None), "model_type", None)
        return f"model_type {mt!r} is not one of {sorted(FAMILIES)}"
    return fam.why_unsupported(hf_model)
