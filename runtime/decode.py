"""Plain autoregressive generation on the compact model's static KV cache.

Design points:
- ``prefill`` runs the prompt once; ``decode_one_token`` is a fixed-shape step (B, 1) whose inputs
  live in static tensors mutated in place, so on CUDA it is captured once in a CUDA graph
  (``StepGraph``: manual ``torch.cuda.CUDAGraph`` by default, or torch.compile "reduce-overhead").
- Batching by LEFT padding: row b's prompt occupies cache slots [pad_b, L) where L is the longest
  prompt; its RoPE positions still start at 0 (slot != position, see ``CompactLM.forward``). Keys in
  slots < pad_b are masked out. All rows then share the write slot of every decode step.
- No host sync per step: sampling is sync-free, finished rows keep emitting EOS, and the "all rows
  done?" test syncs only every ``check_every`` steps.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import torch

from .sampling import check_sampling_args, make_generator, sample

__all__ = ["GenerationResult", "StepGraph", "prefill", "decode_one_token", "generate_plain"]


@dataclass
class GenerationResult:
    tokens: list[int]  # new tokens only (the prompt excluded); ends with the EOS token if one was hit
    num_new: int
    prefill_s: float = 0.0
    decode_s: float = 0.0  # everything after prefill (graph capture excluded, see capture_s)
    capture_s: float = 0.0
    stopped_on_eos: bool = False
    accept_lengths: list[int] = field(default_factory=list)  # Medusa: tokens emitted per verify step

    @property
    def tokens_per_s(self) -> float:
        return self.num_new / self.decode_s if self.decode_s > 0 else float("nan")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


_MODES = ("exact", "graph", "inductor", "compile", "eager")


def resolve_mode(compile, device, model=None) -> str:
    """None/True -> 'exact' on CUDA when the model's attention shape allows it, else 'graph' (eager
    on a CPU, where fp32 eager steps already agree); False -> 'eager'; else one of _MODES:
    'exact' = the batch-invariant kernels (``CompactLM.forward_exact``) captured in a CUDA graph:
    greedy Medusa, batched and single-prompt decoding then give identical tokens in any dtype;
    'graph' = eager kernels captured in a CUDA graph; 'inductor' = layers through one torch.compile'd
    layer function (fused elementwise ops), then captured the same way; 'compile' = torch.compile
    mode="reduce-overhead" of the whole step (gpt-fast's way)."""
    if compile is None or compile is True:
        if torch.device(device).type != "cuda":
            return "eager"
        # exact is also the fastest step on the H200 (results/decode-*-exact.json)
        return "exact" if model is None or model.exact_supported is None else "graph"
    if compile is False:
        return "eager"
    if compile not in _MODES:
        raise ValueError(f"compile must be None, a bool or one of {_MODES}; got {compile!r}")
    if compile == "exact" and torch.device(device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("compile='exact' runs Triton kernels: it needs a CUDA model (or TRITON_INTERPRET=1 on a CPU)")
    if compile not in ("eager", "exact") and torch.device(device).type != "cuda":
        raise ValueError(f"compile={compile!r} needs a CUDA model; use compile=None or 'eager' on {device}")
    return compile


def capture_mode(mode: str, device) -> str:
    """How a step of ``mode`` is run: 'exact' is captured like 'graph' (eager on a CPU)."""
    if mode == "exact":
        return "graph" if torch.device(device).type == "cuda" else "eager"
    return mode


@contextlib.contextmanager
def exact_kernels(model, on: bool):
    """Route the model's forwards through ``forward_exact`` within the block."""
    if on and model.exact_supported:
        raise ValueError(f"compile='exact' cannot run this model: {model.exact_supported}")
    old, model.exact = model.exact, on
    try:
        yield
    finally:
        model.exact = old


class StepGraph:
    """A fixed-shape step ``fn(*inputs) -> outputs`` whose ``inputs`` the caller mutates in place.

    'graph' / 'inductor': warmed up on a side stream (this is when 'inductor' compiles), then captured
    once; ``__call__`` replays and returns the same static output tensors every time (consume them
    before the next call).
    """

    def __init__(self, fn, inputs: list[torch.Tensor], mode: str, model=None):
        if mode == "inductor":
            plain_fn = fn

            def fn(*a):
                with model.compiled_layers():
                    return plain_fn(*a)
        self.fn, self.inputs, self.mode = fn, inputs, mode
        if mode in ("graph", "inductor"):
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    fn(*inputs)
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = fn(*inputs)
        elif mode == "compile":
            self.cfn = torch.compile(fn, mode="reduce-overhead", fullgraph=True)

    def __call__(self):
        if self.mode in ("graph", "inductor"):
            self.graph.replay()
            return self.outputs
        if self.mode == "compile":
            torch.compiler.cudagraph_mark_step_begin()
            return self.cfn(*self.inputs)
        return self.fn(*self.inputs)


def get_step(model, key, fn, inputs_init: list[torch.Tensor], mode: str) -> StepGraph:
    """Cached StepGraph per (key, mode); ``inputs_init`` are copied into its static inputs."""
    step = model.step_graphs.get((key, mode))
    if step is None:
        step = StepGraph(fn, [t.clone() for t in inputs_init], mode, model)
        model.step_graphs[(key, mode)] = step
    else:
        for dst, src in zip(step.inputs, inputs_init):
            dst.copy_(src)
    return step


def prefill(model, input_ids, input_pos, mask=None, write_pos=None, pads=None):
    """Prompt forward. Returns (last-position logits (B, V), final hidden states (B, T, H)).

    ``pads`` (B,): left padding per row (needed by the exact path, which takes key ranges, not masks)."""
    if model.exact:
        B, T = input_ids.shape
        write_pos = input_pos if write_pos is None else write_pos
        start = torch.zeros(B, dtype=torch.long, device=input_ids.device) if pads is None else pads
        # row b's prompt holds slots [pad_b, T); its token at position p sees logical keys 0..p
        logits, hidden = model.forward_exact(input_ids, input_pos, write_pos, start, T - start, input_pos + 1,
                                             last_only=True)
    else:
        logits, hidden = model(input_ids, input_pos, mask=mask, write_pos=write_pos, last_only=True)
    return logits[:, -1], hidden


def decode_one_token(model, token, input_pos, write_pos, kv_start):
    """One step for (B, 1) tokens; attends to cache slots kv_start <= s <= write_pos. -> logits (B, V)."""
    if model.exact:  # keys are the contiguous slots kv_start..write_pos, in logical order
        n = (write_pos - kv_start + 1)[:, 0]  # (B,)
        logits, _ = model.forward_exact(token, input_pos, write_pos, kv_start[:, 0], n, n[:, None])
        return logits[:, -1]
    slots = torch.arange(model.max_seq_len, device=token.device)
    mask = ((slots >= kv_start) & (slots <= write_pos))[:, None, None]  # (B, 1, 1, S)
    logits, _ = model(token, input_pos, mask=mask, write_pos=write_pos)
    return logits[:, -1]


def _left_pad(prompts, device):
    B, L = len(prompts), max(len(p) for p in prompts)
    pads = torch.tensor([L - len(p) for p in prompts], device=device)  # (B,)
    ids = torch.zeros(B, L, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long)
    slots = torch.arange(L, device=device)
    pos = (slots[None] - pads[:, None]).clamp(min=0)  # (B, L) RoPE positions restart at each prompt
    write = slots[None].expand(B, L)
    mask = None
    if int(pads.max()) > 0:
        S = torch.arange(L, device=device)  # only slots < L exist yet; extend to the cache below
        causal = S[None, :] <= slots[:, None]  # (L, L)
        real = S[None, None, :] >= pads[:, None, None]  # (B, 1, L)
        # padded query rows see only themselves, so they stay finite (NaN k/v would poison 0-weights)
        diag = S[None, :] == slots[:, None]
        mask = (causal[None] & (real | diag[None]))[:, None]  # (B, 1, L, L)
    return ids, pos, write, mask, pads, L


@torch.no_grad()
def generate_plain(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, eos_ids=(), compile=None,
                   check_every: int = 16) -> list[GenerationResult]:
    """Generate for a batch of prompts (token id lists); one GenerationResult per prompt, in order.

    ``compile``: None -> 'graph' on CUDA, 'eager' on CPU; 'inductor' (fastest on CUDA, compiles one layer
    function first, ~2-6 s), 'compile' (torch.compile reduce-overhead of the whole step), 'eager'.
    """
    check_sampling_args(temperature, top_p)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token id lists")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model.device
    mode = resolve_mode(compile, device, model)
    with exact_kernels(model, mode == "exact"):
        return _generate_plain(model, prompts, max_new_tokens, temperature, top_p, seed, eos_ids, mode, check_every)


def _generate_plain(model, prompts, max_new_tokens, temperature, top_p, seed, eos_ids, mode, check_every):
    device = model.device
    B = len(prompts)
    ids, pos, write, mask, pads, L = _left_pad(prompts, device)
    need = L + max_new_tokens
    model.setup_cache(B, need)
    S = model.max_seq_len
    if mask is not None:  # widen the prompt mask to all cache slots (later slots masked out)
        mask = torch.cat([mask, mask.new_zeros(B, 1, L, S - L)], dim=-1)
    gen = make_generator(device, seed)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)

    _sync(device)
    t0 = time.perf_counter()
    logits, _ = prefill(model, ids, pos, mask=mask, write_pos=write, pads=pads)
    nxt = sample(logits, temperature, top_p, gen)  # (B,)
    _sync(device)
    t1 = time.perf_counter()

    lens = torch.tensor([len(p) for p in prompts], device=device)
    init = [nxt[:, None], lens[:, None], torch.full((B, 1), L, device=device), pads[:, None]]
    step = get_step(model, ("plain", B, mode), lambda *a: decode_one_token(model, *a), init, capture_mode(mode, device))
    tok, in_pos, w_pos, _ = step.inputs
    _sync(device)
    t2 = time.perf_counter()

    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    fill = int(eos[0]) if len(eos) else 0
    n = max_new_tokens
    for i in range(max_new_tokens):
        out[:, i] = nxt
        if len(eos):
            done |= torch.isin(nxt, eos)
            if (i + 1) % check_every == 0 and bool(done.all()):
                n = i + 1
                break
        if i == max_new_tokens - 1:
            break
        if i > 0:
            in_pos.add_(1)
            w_pos.add_(1)
        tok.copy_(nxt[:, None])
        nxt = sample(step(), temperature, top_p, gen)
        if len(eos):
            nxt = torch.where(done, fill, nxt)
    out = out[:, :n].tolist()
    _sync(device)
    t3 = time.perf_counter()

    results = []
    for row in out:
        hit = next((j for j, t in enumerate(row) if t in set(eos_ids)), None)
        toks = row if hit is None else row[: hit + 1]
        results.append(GenerationResult(tokens=toks, num_new=len(toks), prefill_s=t1 - t0, decode_s=t3 - t2,
                                         capture_s=t2 - t1, stopped_on_eos=hit is not None))
    return results
