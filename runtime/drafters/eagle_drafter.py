"""EAGLE-3 as a drafter of the engine's speculative loop (``runtime.speculative``).

The draft (``eagle.EagleDraft``) reads the base model's residual stream at three layers and runs
autoregressively with its own small KV cache, so, unlike Medusa:
- ``fixed_tree = False``: a new EAGLE-2 dynamic tree every step (``dynamic_tree.grow_tree``); the
  loop verifies whatever ``self.tree`` is (a ``DynamicTree`` carries the fields ``verify`` reads)
  and runs uncaptured. Its shapes are static per (top_k, depth, N), which is what a CUDA-graph
  capture would key on later.
- ``feature_layers``: EAGLE-3 takes the *input* of base layer i (transformers' ``hidden_states[i]``)
  = the output of layer i-1, which is what ``CompactLM.forward(features=)`` returns.
- ``accept`` only records the accepted path (its verified features and tokens); the next ``propose``
  re-runs the draft over it ("catch-up") into the slots right after the committed prefix, which
  overwrites the dead tree slots: the draft cache is rolled back to the accepted path by construction.
  This needs the path length on the host (one sync per step), fine for an uncaptured loop.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .base import Drafter
from .dynamic_tree import num_candidates
from .eagle import EagleConfig, EagleConfigError, EagleDraft
from .eagle_decode import _draft_catch_up, _draft_tree

__all__ = ["EagleDrafter"]

_MAX_TOPK, _MAX_DEPTH, _MAX_NODES = 64, 32, 1024  # bounds on a pack's tree settings
_TREE_DEFAULT = {"top_k": 8, "depth": 5, "num_nodes": 48}
_DRAFT_MARGIN = 4096  # draft-cache slots beyond the prompt before it is grown (doubling)


class EagleDrafter(Drafter):
    kind = "eagle"
    fixed_tree = False

    def __init__(self, draft: EagleDraft, top_k: int = 8, depth: int = 5, num_nodes: int = 48):
        c = draft.config
        if not (1 <= top_k <= _MAX_TOPK and 1 <= depth <= _MAX_DEPTH and 1 <= num_nodes <= _MAX_NODES):
            raise ValueError(f"EAGLE tree top_k={top_k} depth={depth} num_nodes={num_nodes} outside "
                             f"[1, {_MAX_TOPK}] / [1, {_MAX_DEPTH}] / [1, {_MAX_NODES}]")
        if any(i < 1 for i in c.feature_layers):
            raise ValueError(f"EAGLE feature layers {list(c.feature_layers)} must be >= 1 (layer 0's input is the embedding)")
        self.draft = draft
        self.top_k, self.depth = min(top_k, c.vocab_size), depth
        self.num_nodes = min(num_nodes, num_candidates(self.top_k, depth) - 1)
        self.feature_layers = tuple(i - 1 for i in c.feature_layers)  # layer outputs, see the docstring
        self.cache = None
        self._prompt_ids = None
        self._pending = None  # (features (T, 3H), tokens (T-1,)) still to be run through the draft
        self.tree = self._shape()

    def _shape(self):
        # before the first propose the loop sizes its state from the tree: every tree has these shapes
        return SimpleNamespace(num_nodes=self.num_nodes + 1, num_heads=self.depth)

    @staticmethod
    def _flat(feats: torch.Tensor) -> torch.Tensor:
        return feats.permute(1, 0, 2).reshape(feats.shape[1], -1)  # (F, T, H) -> (T, F*H), layer-major like cat

    def _ensure(self, need: int) -> None:
        c = self.cache
        if c is not None and need <= c.max_len:
            return
        new = self.draft.new_cache(1, max(need, 2 * (c.max_len if c else 0)))
        if c is not None:
            new.k[:, :, : c.max_len], new.v[:, :, : c.max_len] = c.k, c.v
            new.length = c.length
        self.cache = new

    # -- decoding --------------------------------------------------------------------------------
    def reset(self) -> None:
        if self.cache is not None:
            self.cache.rollback(0)
        self._pending, self.tree = None, self._shape()

    def set_prompt(self, prompt_ids) -> None:
        self._prompt_ids = prompt_ids

    def begin(self, prompt_feats: torch.Tensor) -> None:
        if self._prompt_ids is None:
            raise ValueError("the EAGLE drafter needs the prompt's token ids: call set_prompt() before begin()")
        ids = torch.as_tensor(self._prompt_ids, dtype=torch.long, device=prompt_feats.device).reshape(-1)
        self._ensure(ids.numel() + _DRAFT_MARGIN)
        self.cache.rollback(0)
        self._pending = (self._flat(prompt_feats), ids[1:])

    def propose(self, root: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        pf, toks = self._pending
        root = root.reshape(1)
        self._ensure(self.cache.length + pf.shape[0] + self.depth * self.top_k + 1)
        logp, h = _draft_catch_up(self.draft, self.cache, pf, torch.cat([toks, root]))
        self.tree = _draft_tree(self.draft, self.cache, root.reshape(()), logp, h, self.top_k, self.depth,
                                self.num_nodes)
        return self.tree.tokens

    def accept(self, feats: torch.Tensor, nodes: torch.Tensor, n: torch.Tensor) -> None:
        a = int(n.reshape(-1)[0])  # host sync: the path length sizes the catch-up
        path = nodes[: a + 1]
        self._pending = (self._flat(feats[:, path]), self.tree.tokens[path[1:]])

    def bounds(self) -> tuple[int, int]:
        return self.depth, self.num_nodes + 1

    # -- pack ------------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, config: dict) -> dict:
        if not isinstance(config, dict):
            raise ValueError("the EAGLE config must be a JSON object")
        tree = config.get("tree", _TREE_DEFAULT)
        ok = isinstance(tree, dict) and set(tree) <= set(_TREE_DEFAULT) and all(
            isinstance(tree.get(k, 1), int) and not isinstance(tree.get(k, 1), bool) for k in _TREE_DEFAULT)
        if not ok:
            raise ValueError(f"the EAGLE tree must be an object with integer {sorted(_TREE_DEFAULT)}")
        t = {**_TREE_DEFAULT, **tree}
        for name, hi in (("top_k", _MAX_TOPK), ("depth", _MAX_DEPTH), ("num_nodes", _MAX_NODES)):
            if not 1 <= t[name] <= hi:
                raise ValueError(f"EAGLE tree {name}={t[name]} is outside [1, {hi}]")
        try:
            EagleConfig.from_dict({k: v for k, v in config.items() if k != "tree"})
        except EagleConfigError as e:
            raise ValueError(str(e)) from None
        return config

    @classmethod
    def expected_tensors(cls, config: dict) -> dict[str, tuple[int, ...]]:
        cls.validate_config(config)
        c = EagleConfig.from_dict({k: v for k, v in config.items() if k != "tree"})
        H, I, D = c.hidden_size, c.intermediate_size, c.head_dim
        q, kv = c.num_attention_heads * D, c.num_key_value_heads * D
        return {"fc.weight": (H, 3 * H), "midlayer.hidden_norm.weight": (H,), "midlayer.input_layernorm.weight": (H,),
                "midlayer.post_attention_layernorm.weight": (H,), "midlayer.self_attn.q_proj.weight": (q, 2 * H),
                "midlayer.self_attn.k_proj.weight": (kv, 2 * H), "midlayer.self_attn.v_proj.weight": (kv, 2 * H),
                "midlayer.self_attn.o_proj.weight": (H, q), "midlayer.mlp.gate_proj.weight": (I, H),
                "midlayer.mlp.up_proj.weight": (I, H), "midlayer.mlp.down_proj.weight": (H, I), "norm.weight": (H,)}

    @classmethod
    def from_pack(cls, pack, model, tree=None) -> "EagleDrafter":
        if tree is not None and not isinstance(tree, dict):
            raise ValueError("an EAGLE drafter grows its own tree: --tree files are for Medusa packs")
        cfg = dict(pack.drafter)
        t = {**_TREE_DEFAULT, **cfg.pop("tree", {}), **(tree or {})}
        draft = EagleDraft(EagleConfig.from_dict(cfg))
        draft.load_state_dict(pack.tensors, strict=True)
        draft = draft.to(device=model.device, dtype=model.dtype).eval().requires_grad_(False)
        draft.attach_base(model.tok_embeddings, model.output.weight)
        return cls(draft, **t)

    def to_pack(self) -> tuple[dict, dict[str, torch.Tensor]]:
        cfg = {**self.draft.config.to_dict(),
               "tree": {"top_k": self.top_k, "depth": self.depth, "num_nodes": self.num_nodes}}
        return cfg, dict(self.draft.state_dict())
