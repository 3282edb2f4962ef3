"""Qwen2 / Qwen2.5: q/k/v biases (no o bias), optional sliding window."""

from .base import Family

FAMILY = Family("qwen2", attention_bias=True, sliding_window=True)
