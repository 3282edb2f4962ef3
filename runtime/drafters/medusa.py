"""Medusa as a drafter (Cai et al. 2024): K heads on the base model's last hidden state, a fixed
sparse tree of their top-k tokens (``runtime.tree``), no KV cache of its own.

The heads module (``MedusaHeads``, vLLM tensor names) lives in ``medusa_heads.py``; this file adapts
it to the drafter protocol and to the pack (config validation with bounds, tensor shapes, loading).
"""

from __future__ import annotations

import torch

from ..tree import TreeBuffers, default_tree
from .base import Drafter
from .medusa_heads import MedusaConfig, MedusaHeads

__all__ = ["MedusaDrafter"]

# Bounds on a pack's config, checked before anything is sized from it (a hostile or broken pack
# must fail with one line, not allocate a billion heads).
_MAX_HEADS, _MAX_LAYERS, _MAX_HIDDEN, _MAX_VOCAB, _MAX_TREE = 16, 8, 65536, 1 << 20, 1024


def _heads_dtype(heads) -> torch.dtype:
    for t in list(heads.parameters()) + list(heads.buffers()):
        return t.dtype
    raise ValueError("MedusaHeads has neither parameters nor buffers; call attach_lm_head first")


class MedusaDrafter(Drafter):
    kind = "medusa"
    feature_layers = (-1,)  # the final-norm hidden state
    fixed_tree = True

    def __init__(self, heads, tree=None, device=None):
        self.heads = heads
        K = heads.config.num_heads
        device = device if device is not None else next(iter(list(heads.parameters()) + list(heads.buffers()))).device
        # shared: a drafter built per request (generate_medusa) must not rebuild the tree's buffers each time
        tb = tree if isinstance(tree, TreeBuffers) else TreeBuffers.shared(tree or default_tree(K), device=device)
        if tb.num_heads > K or tb.topk > heads.config.vocab_size:
            raise ValueError(f"tree depth {tb.num_heads} needs that many heads (have {K}); build it for {K} heads")
        if tb.tree_indices.device.type != torch.device(device).type:
            raise ValueError(f"TreeBuffers live on {tb.tree_indices.device}, heads on {device}: build it with device=")
        self.tree = tb
        self._dtype = _heads_dtype(heads)

    def propose(self, root, feats):
        h = feats[-1].to(self._dtype)  # (1, H)
        topk = self.heads(h[None])[:, 0, 0].topk(self.tree.topk, dim=-1).indices  # (K, topk)
        return self.tree.candidates(root, topk[: self.tree.num_heads])

    def cache_key(self) -> tuple:
        # stateless: any MedusaDrafter over the same heads and tree can replay the same captured step
        return (self.kind, id(self.heads), tuple(self.tree.paths), self._dtype)

    # -- pack ------------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict) -> dict:
        if not isinstance(config, dict):
            raise ValueError("the Medusa config must be a JSON object")
        try:
            K, nl = int(config["num_heads"]), int(config["num_layers"])
            H, V = int(config["hidden_size"]), int(config["vocab_size"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("the Medusa config lacks integer num_heads/num_layers/hidden_size/vocab_size") from None
        for name, v, hi, lo in (("num_heads", K, _MAX_HEADS, 1), ("num_layers", nl, _MAX_LAYERS, 0),
                                ("hidden_size", H, _MAX_HIDDEN, 1), ("vocab_size", V, _MAX_VOCAB, 1)):
            if not lo <= v <= hi:
                raise ValueError(f"Medusa {name}={v} is outside [{lo}, {hi}]")
        if config.get("projection", "shared") not in ("shared", "own"):
            raise ValueError(f"Medusa projection must be 'shared' or 'own', got {config.get('projection')!r}")
        tree = config.get("tree")
        if tree is not None:
            ok = isinstance(tree, list) and 0 < len(tree) <= _MAX_TREE and all(
                isinstance(p, list) and 0 < len(p) <= K and all(isinstance(r, int) and 0 <= r < V for r in p)
                for p in tree)
            if not ok:
                raise ValueError(f"the Medusa tree must be 1..{_MAX_TREE} paths of 1..{K} top-k ranks")
        return config

    @classmethod
    def expected_tensors(cls, config: dict) -> dict[str, tuple[int, ...]]:
        cls.validate_config(config)
        H, V = int(config["hidden_size"]), int(config["vocab_size"])
        shapes = {}
        for i in range(int(config["num_heads"])):
            for j in range(int(config["num_layers"])):
                shapes[f"blocks.{i}.layers.{j}.weight"] = (H, H)
                shapes[f"blocks.{i}.layers.{j}.bias"] = (H,)
            if config.get("projection", "shared") == "own":
                shapes[f"lm_heads.{i}.weight"] = (V, H)
        return shapes

    @classmethod
    def load_heads(cls, pack, model) -> tuple[MedusaHeads, list | None]:
        """The pack's heads on the compact model's device and dtype, and the pack's tree (or None)."""
        cfg = MedusaConfig.from_dict(pack.drafter)
        heads = MedusaHeads(cfg, lm_head_weight=model.output.weight if cfg.projection == "shared" else None)
        heads.load_state_dict(pack.tensors, strict=True)
        heads = heads.to(device=model.device, dtype=model.dtype).eval().requires_grad_(False)
        heads.attach_lm_head(model.output.weight)  # .to() may have copied the shared lm_head
        tree = pack.drafter.get("tree")
        return heads, ([tuple(p) for p in tree] if tree else None)

    @classmethod
    def from_pack(cls, pack, model, tree=None) -> "MedusaDrafter":
        heads, pack_tree = cls.load_heads(pack, model)
        return cls(heads, tree or pack_tree, device=model.device)

    def to_pack(self) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg = {**self.heads.config.to_dict(), "tree": [list(p) for p in self.tree.paths]}
        return cfg, dict(self.heads.state_dict())
