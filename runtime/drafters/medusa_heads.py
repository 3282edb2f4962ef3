"""Medusa decoding heads (Cai et al. 2024).

Head k (0-based) predicts the token k+1 places after the base model's next token, from the base
model's last hidden state: ``n`` ResBlocks ``x + SiLU(W x + b)`` with W zero-initialised (so each head
starts as the identity on the hidden state) followed by a vocab projection.

Two projection kinds:
- ``own``: every head has its own ``lm_heads.{i}.weight`` (initialised from the base ``lm_head``);
- ``shared``: every head reuses the base model's frozen ``lm_head`` (the pack then holds only the
  ResBlocks, ~1/30 of the bytes for SmolLM2).

Parameter names follow vLLM's Medusa loader: ``blocks.{i}.layers.{j}.weight|bias`` and
``lm_heads.{i}.weight``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MedusaConfig", "MedusaHeads"]


@dataclass
class MedusaConfig:
    num_heads: int = 4
    num_layers: int = 1
    hidden_size: int = 576
    vocab_size: int = 49152
    projection: str = "shared"  # "shared" | "own"

    def __post_init__(self):
        if self.projection not in ("shared", "own"):
            raise ValueError(f"projection must be 'shared' or 'own', got {self.projection!r}")
        if self.num_heads < 1 or self.num_layers < 0:
            raise ValueError("num_heads must be >= 1 and num_layers >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MedusaConfig":
        keys = {"num_heads", "num_layers", "hidden_size", "vocab_size", "projection"}
        return cls(**{k: d[k] for k in keys if k in d})


def _zero_linear(hidden_size: int) -> nn.Linear:
    lin = nn.Linear(hidden_size, hidden_size)
    nn.init.zeros_(lin.weight)  # identity at init: x + SiLU(0) = x, so a head starts as the base lm_head
    nn.init.zeros_(lin.bias)
    return lin


class _Block(nn.Module):
    """``num_layers`` ResBlocks x + SiLU(W x + b); the Linear layers sit directly in ``layers`` so the
    parameter names are vLLM's ``blocks.{i}.layers.{j}.weight``."""

    def __init__(self, hidden_size: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([_zero_linear(hidden_size) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = x + F.silu(lin(x))
        return x


class MedusaHeads(nn.Module):
    """``forward(hidden (B, T, H)) -> logits (K, B, T, V)``.

    For ``projection="shared"`` pass the base ``lm_head`` weight (V, H) as ``lm_head_weight``; it is
    kept as a non-persistent buffer, so ``state_dict()`` holds only the ResBlocks.
    """

    def __init__(self, config: MedusaConfig, lm_head_weight: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        H, V = config.hidden_size, config.vocab_size
        self.blocks = nn.ModuleList([_Block(H, config.num_layers) for _ in range(config.num_heads)])
        if lm_head_weight is not None and tuple(lm_head_weight.shape) != (V, H):
            raise ValueError(f"lm_head weight has shape {tuple(lm_head_weight.shape)}, expected {(V, H)}")
        if config.projection == "own":
            self.lm_heads = nn.ModuleList([nn.Linear(H, V, bias=False) for _ in range(config.num_heads)])
            if lm_head_weight is not None:
                for head in self.lm_heads:
                    head.weight.data.copy_(lm_head_weight.detach())
        else:
            if lm_head_weight is None:
                raise ValueError("projection='shared' needs the base model's lm_head weight")
            self.register_buffer("shared_lm_head", lm_head_weight.detach(), persistent=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head transformed hidden states: (K, B, T, H)."""
        return torch.stack([blk(x) for blk in self.blocks])

    def project(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Head k's vocab projection of its transformed hidden state (..., H) -> (..., V): the one
        place it is written (decoding and training both call it)."""
        if self.config.projection == "own":
            return self.lm_heads[k](h)
        return h @ self.shared_lm_head.t().to(h.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)  # (K, B, T, H)
        if self.config.projection == "own":
            return torch.stack([self.project(i, h[i]) for i in range(len(self.lm_heads))])
        return self.project(0, h)  # one matmul for all heads: (K, B, T, H) @ (H, V)

    def attach_lm_head(self, lm_head_weight: torch.Tensor) -> None:
        """Re-point a shared head at the base model's lm_head (after loading from a pack)."""
        if self.config.projection == "shared":
            self.shared_lm_head = lm_head_weight.detach()
