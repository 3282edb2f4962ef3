"""Qwen3: no q/k/v bias; RMSNorm over head_dim on each q and k head (``q_norm`` / ``k_norm``) before RoPE."""

from .base import Family

FAMILY = Family("qwen3", qk_norm=True, sliding_window=True)
