"""Llama (Llama 2/3, SmolLM): no biases, RoPE default / linear / llama3."""

from .base import Family

FAMILY = Family("llama", attention_bias=True)  # LlamaConfig.attention_bias: q/k/v/o biases when set
