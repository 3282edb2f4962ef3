"""The tiny random Llama (97-token vocabulary, 4 layers, GQA 4/2) and the EAGLE draft on it that the
EAGLE tests share (test_eagle, test_eagle_drafter, test_eagle_graph)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.runtime.drafters.eagle import EagleConfig, EagleDraft

V = 97


def tiny_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       initializer_range=0.3, tie_word_embeddings=True)


def tiny_hf() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def make_draft(model, seed: int = 1, std: float = 0.3, cls=EagleDraft):
    """An EAGLE draft on `model` (sharing its embedding and lm_head), randomly initialised, frozen."""
    d = cls(EagleConfig.for_base(model, intermediate_size=96), model.tok_embeddings, model.output.weight)
    d.init_weights(seed, std)
    return d.eval().requires_grad_(False)
