"""Plain autoregressive decoding of a batch on the compact model's static KV cache.

Design points:
- Every prompt is prefilled ALONE, at its own length, into its own cache row (slots 0..len-1), with
  its own ``PrefillPlan``: sparse prefill applies to each prompt whatever the others' lengths. Then
  the batch decodes together: row b's next token goes to slot len_b + i (ragged rows, no padding).
- ``decode_one_token`` is a fixed-shape step (B, 1) whose inputs live in static tensors mutated in
  place, so on CUDA it is captured once in a CUDA graph (``steps.get_step``) and reused.
- No host sync per step: sampling is sync-free, finished rows keep emitting EOS, and new tokens are
  read back (and yielded, for streaming) only every ``check_every`` steps.
``plain_stream`` is the stepping generator the engine yields from (``runtime.decode.generate_plain``
is the batch call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .attention_meta import AttentionMeta
from .phases import mark
from .prefill import DENSE
from .sampling import make_generator, sample
from .steps import backend_for, capture_mode, get_step, sync

__all__ = ["GenerationResult", "Chunk", "prefill", "decode_one_token", "plain_stream"]


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only (the prompt excluded); ends with the EOS token if one was hit
    num_new: int
    prefill_s: float = 0.0
    decode_s: float = 0.0  # everything after prefill up to this prompt's last token (capture excluded)
    capture_s: float = 0.0
    stopped_on_eos: bool = False
    accept_lengths: list[int] = field(default_factory=list)  # speculative: tokens emitted per verify step

    @property
    def tokens_per_s(self) -> float:
        """Decode-only speed (after the first token)."""
        return self.num_new / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def wall_s(self) -> float:
        """This request from its prefill to its last token: prefill, any graph capture, decode."""
        return self.prefill_s + self.capture_s + self.decode_s

    @property
    def wall_tokens_per_s(self) -> float:
        """What a user feels: new tokens over ``wall_s`` (time to first token included)."""
        return self.num_new / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass
class Chunk:
    """Tokens of prompt ``row`` accepted since the last chunk; ``result`` is set on its last chunk."""

    row: int
    tokens: list[int]
    result: GenerationResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


def prefill(model, prompt_ids: list[int], backend: str, plan=DENSE, row: int = 0, features=None):
    """One prompt alone into cache row ``row``. -> (last-position logits (1, V), hidden / features)."""
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    pos = torch.arange(len(prompt_ids), device=model.device)[None]
    logits, hidden = model(ids, AttentionMeta.prompt(pos, plan, row0=row), backend=backend, last_only=True,
                           features=features)
    return logits[:, -1], hidden


def decode_one_token(model, token, pos, backend: str):
    """One step for (B, 1) tokens at positions (= slots) ``pos``; keys are slots 0..pos. -> logits (B, V)."""
    logits, _ = model(token, AttentionMeta.causal(pos), backend=backend)
    return logits[:, -1]


def _first_eos(row: list[int], eos: set) -> int | None:
    return next((j for j, t in enumerate(row) if t in eos), None)


@torch.no_grad()
def plain_stream(model, prompts: list[list[int]], max_new_tokens: int, *, mode: str, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, eos_ids=(), plans=None, check_every: int = 16, rows=None):
    """Yield ``Chunk``s as tokens are accepted; each prompt's last chunk carries its GenerationResult.
    ``rows``: the ids the chunks report (default 0..B-1)."""
    device, backend = model.device, backend_for(mode)
    mark("setup")
    B = len(prompts)
    rows = list(range(B)) if rows is None else rows
    plans = plans or [DENSE] * B
    lens = [len(p) for p in prompts]
    model.setup_cache(B, max(lens) + max_new_tokens)
    gen = make_generator(device, seed)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    eos_set = set(eos_ids)

    sync(device)
    mark("prefill")
    t0 = time.perf_counter()
    logits = torch.cat([prefill(model, p, backend, plans[b], row=b)[0] for b, p in enumerate(prompts)])  # (B, V)
    nxt = sample(logits, temperature, top_p, gen)  # (B,)
    sync(device)
    t1 = time.perf_counter()
    mark("get_step")

    pos0 = torch.tensor(lens, device=device)[:, None]  # (B, 1): the first new token's position / slot
    step = get_step(model, ("plain", B, backend), lambda tok, pos: decode_one_token(model, tok, pos, backend),
                    [nxt[:, None], pos0], capture_mode(mode, device))
    tok, pos = step.inputs
    sync(device)
    mark("decode")
    t2 = time.perf_counter()

    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    fill = int(eos[0]) if len(eos) else 0
    got: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    read = 0
    for i in range(max_new_tokens):
        out[:, i] = nxt
        if len(eos):
            done |= torch.isin(nxt, eos)
        n = i + 1
        if n % check_every == 0 or n == max_new_tokens:
            new = out[:, read:n].tolist()  # the one host sync every check_every steps
            read = n
            sync(device)
            now = time.perf_counter()
            for b in range(B):
                if finished[b]:
                    continue
                cut = _first_eos(new[b], eos_set)
                piece = new[b] if cut is None else new[b][: cut + 1]
                got[b] += piece
                finished[b] = cut is not None or n == max_new_tokens
                res = None
                if finished[b]:
                    res = GenerationResult(tokens=got[b], num_new=len(got[b]), prefill_s=t1 - t0, decode_s=now - t2,
                                           capture_s=t2 - t1, stopped_on_eos=cut is not None)
                if piece or res is not None:
                    yield Chunk(rows[b], piece, res)
            if all(finished):
                mark("teardown")
                mark("end")
                return
        if i > 0:
            pos.add_(1)
        tok.copy_(nxt[:, None])
        nxt = sample(step(), temperature, top_p, gen)
        if len(eos):
            nxt = torch.where(done, fill, nxt)
