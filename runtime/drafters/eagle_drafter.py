"""EAGLE-3 as a drafter of the engine's speculative loop (``runtime.speculative``).

The draft (``eagle.EagleDraft``) reads the base model's residual stream at three layers and runs
autoregressively with its own small KV cache, so, unlike Medusa, it proposes a new EAGLE-2 dynamic tree
every step (``dynamic_tree.grow_tree``). Every shape is static per (top_k, depth, num_nodes), so the
whole greedy step (verify, acceptance, KV move, catch-up, drafting) is captured in ONE CUDA graph like
Medusa's (``fixed_tree = True`` means "static tree buffers", not "the same tree"):
- ``self.tree`` is a ``DynamicTree`` of static tensors refilled in place by each ``propose`` (tokens,
  depth, ancestors, retrieve...): the captured verify reads the tree as DATA.
- The draft's KV cache and its committed length (``self.length``, a (1,) device tensor) are static
  buffers sized by ``reserve`` before the step is captured (between requests only; a reallocation
  tells the loop to drop the stale capture).
- ``accept`` only records the accepted path; the next ``propose`` re-runs the draft over it
  ("catch-up") over a FIXED depth+1 slots right after the committed prefix, of which the first a+1 are
  real (``eagle_decode._draft_catch_up_static``): the draft cache is rolled back to the accepted path
  by construction and no host sync is needed for the path length.
- ``feature_layers``: EAGLE-3 takes the *input* of base layer i (transformers' ``hidden_states[i]``)
  = the output of layer i-1, which is what ``CompactLM.forward(features=)`` returns.
Per request (issue 14: this was ~30 ms of EAGLE's per-request overhead on the H200, against plain's
prefill alone), the prompt's own catch-up ("draft prefill") and the first tree run through two more
steps captured once per drafter (``capture_propose``) and replayed, never eagerly:
- the draft prefill goes through the prompt in chunks of ``PROMPT_CHUNK`` slots, one replay each (the
  step's fixed-size catch-up, with a device counter of the tokens left): its shapes no longer depend on
  the prompt's length. An eager pass over the whole prompt had a new attention shape every request,
  which costs a new plan on backends that plan per shape (cuDNN SDPA, the default on Hopper with
  torch >= 2.10), plus ~45 eager launches and (L, V) logits of which one row was used;
- the first tree (~200 launches eagerly) reads the last chunk's log-probs and hidden state.
A drafter used outside the speculative loop (no capture) runs both eagerly, the prompt in one pass.
"""

from __future__ import annotations

import torch

from ..phases import mark
from .base import Drafter
from .dynamic_tree import DynamicTree, num_candidates
from .eagle import EagleConfig, EagleConfigError, EagleDraft
from .eagle_decode import _draft_catch_up, _draft_catch_up_static, _draft_tree

__all__ = ["EagleDrafter"]

_MAX_TOPK, _MAX_DEPTH, _MAX_NODES = 64, 32, 1024  # bounds on a pack's tree settings
_TREE_DEFAULT = {"top_k": 8, "depth": 5, "num_nodes": 48}
PROMPT_CHUNK = 64  # draft-prefill slots per replay: 1-2 replays for a chat prompt, 128 at 8K tokens


class EagleDrafter(Drafter):
    kind = "eagle"
    fixed_tree = True  # static tree BUFFERS (new contents every step): the step is capturable

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
        dev = draft.fc.weight.device
        self.cache = None
        self.length = torch.zeros(1, dtype=torch.long, device=dev)  # committed draft length (static)
        self._prompt_ids = None
        self._pending = None  # ("prompt", feats (F, L, H), tokens (L-1,)) or ("path", feats, nodes, a)
        self.tree = self._empty_tree(dev)
        # captured per drafter (``capture_propose``): one draft-prefill chunk, the first tree of a request
        self._chunk = self._first = None
        c = draft.config
        self._first_in = (torch.zeros(1, dtype=torch.long, device=dev),  # root, draft log-probs, draft h
                          torch.zeros(c.vocab_size, dtype=torch.float32, device=dev),
                          torch.zeros(c.hidden_size, dtype=draft.dtype, device=dev))
        C, F = PROMPT_CHUNK, len(self.feature_layers)
        # the chunk step's static inputs: features (C, F, H), next tokens (C,), prompt tokens left (1,)
        self._chunk_in = (torch.zeros(C, F, c.hidden_size, dtype=draft.dtype, device=dev),
                          torch.zeros(C, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev))

    def _empty_tree(self, dev) -> DynamicTree:
        n, D1 = self.num_nodes + 1, self.depth + 1
        z = dict(dtype=torch.long, device=dev)
        anc = torch.zeros(n, D1, **z)
        return DynamicTree(tokens=torch.zeros(n, **z), parents=torch.full((n,), -1, **z), depth=torch.zeros(n, **z),
                           mask=torch.eye(n, dtype=torch.bool, device=dev), ancestors=anc, retrieve=anc,
                           retrieve_valid=torch.zeros(n, D1, dtype=torch.bool, device=dev),
                           scores=torch.zeros(n, dtype=torch.float32, device=dev), cand_index=torch.zeros(n, **z))

    @staticmethod
    def _flat(feats: torch.Tensor) -> torch.Tensor:
        return feats.permute(1, 0, 2).reshape(feats.shape[1], -1)  # (F, T, H) -> (T, F*H), layer-major like cat

    def _ensure(self, need: int) -> bool:
        """Room for ``need`` draft slots; True when the cache was reallocated (never inside a step)."""
        c = self.cache
        if c is not None and need <= c.max_len:
            return False
        # 64-aligned like the base cache: the draft's SDPA masks span every slot, and aligned mask rows
        # keep SDPA on its fused kernels
        new = self.draft.new_cache(1, -(-max(need, 2 * (c.max_len if c else 0)) // 64) * 64)
        if c is not None:
            new.k[:, :, : c.max_len], new.v[:, :, : c.max_len] = c.k, c.v
            new.length = c.length
        self.cache = new
        self._chunk = self._first = None  # they aliased the old cache
        return True

    # -- decoding --------------------------------------------------------------------------------
    def reserve(self, max_len: int) -> bool:
        # every step writes at most depth+1 catch-up slots (a prompt chunk PROMPT_CHUNK) and depth*k
        # tree slots past the committed length
        return self._ensure(max_len + max(self.depth + 1, PROMPT_CHUNK) + self.depth * self.top_k)

    def cache_key(self) -> tuple:
        # the capture aliases this drafter's cache and tree buffers: only this object
        return (self.kind, id(self), self.top_k, self.depth, self.num_nodes)

    def capture_propose(self, mode: str) -> None:
        """Capture a request's draft prefill (one chunk of the prompt) and its first tree once, like the
        step: eagerly they are ~45 launches per request with prompt-dependent shapes plus ~200 for the
        tree, each paying the host's dispatch cost (and a new attention plan per prompt length). 'eager'
        mode (CPU): the same functions, uncaptured. Called by the speculative loop right after it
        captures the step; dropped when ``reserve`` reallocates the draft cache."""
        from ..steps import StepGraph

        if self._first is not None and self._first.mode == mode and self._chunk is not None:
            return
        root, logp, h = self._first_in
        feats, toks, left = self._chunk_in
        C = PROMPT_CHUNK

        def chunk():
            # the next min(left, C) prompt positions; the padded queries past them write dead slots that
            # the next chunk (or the first tree, or the first catch-up) overwrites
            # (1,) real positions - 1; the capture's warm-up runs (left <= 0) take one position, in range
            a = left.clamp(1, C) - 1
            lp, hh = _draft_catch_up_static(self.draft, self.cache, self.length, feats.view(C, -1), toks, a)
            left.sub_(C)
            logp.copy_(lp)
            h.copy_(hh)
            return ()

        def first():
            _draft_tree(self.draft, self.cache, root.reshape(()), logp, h, self.top_k, self.depth, self.num_nodes,
                        length=self.length, out=self.tree)
            return ()
        # warm-up runs (graph mode) write dead draft slots from 0 (the length moves by one a run), the
        # tree buffers and the first-tree inputs; a request resets all of them
        self.length.zero_()
        left.zero_()
        self._chunk = StepGraph(chunk, [], mode)
        self._first = StepGraph(first, [], mode)
        self.length.zero_()

    def reset(self) -> None:
        if self.cache is not None:
            self.cache.rollback(0)
        self.length.zero_()
        self._pending = None

    def set_prompt(self, prompt_ids) -> None:
        # on the device now: the loop calls this before the prefill, while the stream is idle (a blocking
        # copy from a Python list waits for the stream: after the prefill it would wait for all of it)
        self._prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.length.device).reshape(-1)

    def begin(self, prompt_feats: torch.Tensor) -> None:
        if self._prompt_ids is None:
            raise ValueError("the EAGLE drafter needs the prompt's token ids: call set_prompt() before begin()")
        ids = self._prompt_ids
        self.reserve(ids.numel())  # a no-op after the loop's reserve for the whole request
        self.cache.rollback(0)
        self._pending = ("prompt", prompt_feats, ids[1:])

    def _prompt_chunks(self, feats: torch.Tensor, toks: torch.Tensor) -> None:
        """The draft prefill through the captured chunk step: features (F, L, H), next tokens (L,).
        Per chunk two copies into its static inputs and one replay; no host sync."""
        C = PROMPT_CHUNK
        f_in, t_in, left = self._chunk_in
        L = toks.shape[0]
        left.fill_(L)
        for i in range(0, L, C):
            n = min(C, L - i)  # a short last chunk keeps the previous chunk's tail: dead, padded queries
            f_in[:n].copy_(feats[:, i:i + n].transpose(0, 1))
            t_in[:n].copy_(toks[i:i + n])
            self._chunk()
        self.cache.length = L

    def propose(self, root: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        root = root.reshape(1)
        kind, pf, *rest = self._pending
        if kind == "prompt":  # once per request
            mark("draft_prefill")
            toks = torch.cat([rest[0], root])  # (L,) the token after each prompt position
            if self._first is not None:  # captured (``capture_propose``): replays only
                self._prompt_chunks(pf, toks)
                mark("first_tree")
                self._first_in[0].copy_(root)
                self._first()
                self._pending = None
                return self.tree.tokens
            # uncaptured (a drafter driven outside the speculative loop): one eager pass over the prompt
            logp, h = _draft_catch_up(self.draft, self.cache, self._flat(pf), toks)
            self.length.fill_(self.cache.length)
            mark("first_tree")
        else:  # the captured step: fixed depth+1 slots, the path length a stays on the device
            nodes, a = rest
            D1 = nodes.shape[0]
            nxt = torch.cat([self.tree.tokens[nodes[1:]], root])  # (D+1,) token after each path node
            nxt = torch.where(torch.arange(D1, device=root.device) == a, root, nxt)  # after node a: the new root
            logp, h = _draft_catch_up_static(self.draft, self.cache, self.length, pf, nxt, a)
        # selected straight into the static tree buffers (``out``): no copy per field
        _draft_tree(self.draft, self.cache, root.reshape(()), logp, h, self.top_k, self.depth, self.num_nodes,
                    length=self.length, out=self.tree)
        self._pending = None
        return self.tree.tokens

    def accept(self, feats: torch.Tensor, nodes: torch.Tensor, n: torch.Tensor) -> None:
        # nodes (D+1,): the accepted path padded past n (padding = root ids: harmless, masked by position)
        self._pending = ("path", self._flat(feats[:, nodes]), nodes, n.reshape(1))

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
        # stored in bf16 whatever the training precision (fp32 master weights): half the file (SmolLM2's
        # draft: ~10 MB instead of ~20), and loading casts to the model's dtype anyway
        return cfg, {k: v.detach().to(torch.bfloat16) if v.is_floating_point() else v.detach()
                     for k, v in self.draft.state_dict().items()}
