"""EAGLE-3 draft training with training-time test, base model frozen.

Design
- Data: the same ``Example``s (self-distilled continuations, masks) and the same windowing, held-out split,
  batch order, checkpoint and resume machinery as the Medusa trainer (``heads/train.py``): a killed run
  continues bit for bit from its last checkpoint.
- Per batch the frozen base (transformers, ``output_hidden_states``) gives the features (hidden states at
  the draft's ``feature_layers``, i.e. the input of those decoder layers) and its logits. Offsets: the draft
  query at position t reads feature(t) and the embedding of token t+1 and predicts token t+2, whose target
  distribution is the base's softmax at t+1 (``loss="kl"``, what EAGLE-3 trains on) or its argmax (``"ce"``).
- Training-time test (EAGLE-3): the draft is unrolled ``ttt_steps`` times; step j at position t feeds the
  draft's own previous output instead of the base feature, reads token t+j+1, uses RoPE position t+j and
  predicts token t+j+2. Its keys are [step-0 keys of positions <= t] + [its own keys of steps 1..j at t],
  exactly the keys a depth-j node sees at decode time (committed prefix + its ancestors). Step j's loss is
  weighted ``loss_decay ** j``; its top-1 agreement with the base is logged as that step's acceptance.
- The base's embedding and lm_head are shared (never trained, never copied); fp32 master weights for the
  draft, bf16 autocast on CUDA; vocab projections run under activation checkpointing on target rows only.
- Multi-GPU: ``accelerate launch`` runs the same code data-parallel (DDP around the loss module).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..runtime.drafters.eagle import EagleConfig, EagleConfigError, EagleDraft
from .data import HeadsDataError, to_examples
from .train import (HeadsCheckpointError, HeadsConfigError, _autocast, _bf16, _chunks, _collate, _data_hash,
                    _lr_lambda, _Order, _Progress, _save, _split, _warmup, check_schedule, checkpoint_state,
                    resume_checkpoint)

__all__ = ["EagleTrainConfig", "EagleTrainResult", "train_eagle", "evaluate_eagle", "ttt_loss", "unroll", "base_features"]


@dataclass
class EagleTrainConfig:
    ttt_steps: int = 5              # training-time-test unroll length (draft steps trained per position)
    loss: str = "kl"                # "kl": base softmax as target (EAGLE-3) | "ce": base argmax
    aux_layers: tuple | None = None  # base layers fused by fc; None: EAGLE-3's (2, L//2, L-3)
    intermediate_size: int | None = None  # draft MLP width; None: the base's
    init_std: float = 0.02
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 50
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    loss_decay: float = 0.8         # step j's loss weight is loss_decay ** j (EAGLE-3's 0.8)
    checkpoint_dir: str | None = None
    checkpoint_every: int = 200
    resume: bool = False
    seed: int = 0
    eval_fraction: float = 0.05
    eval_max_sequences: int = 512
    eval_batch_size: int | None = None
    precision: str = "auto"         # "auto" (bf16 autocast on CUDA) | "bf16" | "fp32"
    max_train_s: float | None = None  # stop the loop after this long (checkpointed: --resume continues it)

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise HeadsConfigError(msg)
        need(1 <= self.ttt_steps <= 16, f"ttt_steps must be in 1..16, got {self.ttt_steps}")
        need(self.loss in ("kl", "ce"), f"loss must be 'kl' or 'ce', got {self.loss!r}")
        need(self.steps >= 1, "steps must be >= 1")
        need(self.max_train_s is None or self.max_train_s > 0, "max_train_s must be > 0 (or None: no limit)")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        need(self.seq_len >= self.ttt_steps + 2,
             f"seq_len {self.seq_len} is too short for {self.ttt_steps} unrolled steps; use at least {self.ttt_steps + 2}")
        check_schedule(self, need)
        need(self.init_std > 0, "init_std must be > 0")


@dataclass
class EagleTrainResult:
    draft: EagleDraft
    metrics: dict                   # JSON-able: per-step acceptance (train and held-out), losses, speed
    loss_history: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- base model access

def base_features(model, ids: torch.Tensor, attn: torch.Tensor | None, layers: Sequence[int]):
    """Frozen base forward -> (features (B, T, 3H): hidden_states[i] for i in layers, logits (B, T, V))."""
    out = model(input_ids=ids, attention_mask=attn, use_cache=False, output_hidden_states=True)
    return torch.cat([out.hidden_states[i] for i in layers], dim=-1), out.logits


# ----------------------------------------------------------------------------- loss

def _shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, t + n] at t (zero / False past the end): (B, T, ...) -> same shape."""
    if n == 0:
        return x
    pad = torch.zeros_like(x[:, :n])
    return torch.cat([x[:, n:], pad], dim=1)


def _ttt_mask(T: int, j: int, device) -> torch.Tensor:
    """(T, (j+1)T) bool: step-0 keys causal, then the query's own keys of steps 1..j (the diagonal)."""
    t = torch.arange(T, device=device)
    blocks = [t[None, :] <= t[:, None]] + [t[None, :] == t[:, None]] * j
    return torch.cat(blocks, dim=1)


def unroll(draft: EagleDraft, feats: torch.Tensor, ids: torch.Tensor, steps: int):
    """Training-time test: yield the draft's pre-norm output (B, T, H) of unrolled steps j = 0..steps-1.
    Step j at position t reads token t+j+1 at RoPE position t+j (see the module docstring)."""
    B, T, _ = feats.shape
    pos0 = torch.arange(T, device=ids.device)[None].expand(B, T)
    h = draft.fuse(feats)  # (B, T, H)
    keys, vals = [], []
    for j in range(steps):
        q, k, v = draft.layer_qkv(h, _shift(ids, j + 1), pos0 + j)  # (B, Hq|Hkv, T, D)
        keys.append(k)
        vals.append(v)
        attn = F.scaled_dot_product_attention(q, torch.cat(keys, 2), torch.cat(vals, 2),
                                              attn_mask=_ttt_mask(T, j, ids.device), enable_gqa=True)
        h = draft.layer_out(h, attn)  # the next step's input: gradients flow through the unroll
        yield h


class _TTTLoss(nn.Module):
    """The DDP-wrapped unit: features and base logits in, weighted loss + per-step stats out. Holds the
    draft (its own weights only: the shared embedding / lm_head are plain attributes, not parameters)."""

    def __init__(self, draft: EagleDraft, config: EagleTrainConfig):
        super().__init__()
        self.draft, self.steps, self.decay, self.kind = draft, config.ttt_steps, config.loss_decay, config.loss

    def _proj_loss(self, h: torch.Tensor, target_logits: torch.Tensor):
        logits = self.draft.logits(h).float()
        tl = target_logits.float()
        if self.kind == "kl":  # KL(base || draft): the soft CE minus the base's entropy, so 0 is perfect
            logp = torch.log_softmax(tl, -1)
            loss = (logp.exp() * (logp - torch.log_softmax(logits, -1))).sum()
        else:
            loss = F.cross_entropy(logits, tl.argmax(-1), reduction="sum")
        correct = (logits.detach().argmax(-1) == tl.argmax(-1)).sum()
        return loss, correct

    def forward(self, feats: torch.Tensor, ids: torch.Tensor, tmask: torch.Tensor, base_logits: torch.Tensor):
        total = feats.new_zeros((), dtype=torch.float32)
        losses, correct, counts = [], [], []
        for j, h in enumerate(unroll(self.draft, feats, ids, self.steps)):
            valid = _shift(tmask, j + 2)  # target token t+j+2 is a training target
            T = valid.shape[1]
            # base distribution at t+j+1 (predicting t+j+2); sliced, not shifted: no (B, T, V) copy
            tgt = base_logits[:, j + 1:][valid[:, : T - j - 1]]
            n = int(valid.sum())
            if n == 0:
                losses.append(total.detach() * 0)
                correct.append(torch.zeros((), dtype=torch.long, device=ids.device))
                counts.append(0)
                continue
            # recomputed in backward: one step's (rows, vocab) logits alive at a time
            loss, corr = checkpoint(self._proj_loss, h[valid], tgt, use_reentrant=False)
            loss_j = loss / n
            total = total + (self.decay ** j) * loss_j
            losses.append(loss_j.detach())
            correct.append(corr)
            counts.append(n)
        return total, torch.stack(losses), torch.stack(correct), counts


def ttt_loss(draft: EagleDraft, feats, ids, base_logits, mask=None, ttt_steps: int = 3, loss_decay: float = 0.8,
             loss: str = "kl") -> torch.Tensor:
    """Σ_j decay^j · mean loss of unrolled step j (public so tests can check it against a naive loop)."""
    tmask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    cfg = EagleTrainConfig(ttt_steps=ttt_steps, loss_decay=loss_decay, loss=loss)
    return _TTTLoss(draft, cfg)(feats, ids, tmask, base_logits)[0]


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_eagle(model, draft: EagleDraft, chunks, config: EagleTrainConfig, device=None) -> dict:
    """Held-out per-step acceptance (top-1 agreement with the base under the unroll) and loss."""
    device = device or draft.fc.weight.device
    lossmod = _TTTLoss(draft, config)
    K = config.ttt_steps
    corr, cnt, lsum = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    was = draft.training
    draft.eval()
    bs = config.eval_batch_size or config.batch_size
    for b in range(0, len(chunks), bs):
        ids, attn, tmask = _collate(chunks[b: b + bs], device)
        with _autocast(device, config):
            feats, logits = base_features(model, ids, attn, draft.config.feature_layers)
            if not _bf16(device, config):
                feats = feats.float()
            _, losses, c, n = lossmod(feats, ids, tmask & attn.bool(), logits)
        n = torch.tensor(n, dtype=torch.float64)
        corr += c.double().cpu()
        cnt += n
        lsum += losses.double().cpu() * n
    draft.train(was)
    acc = (corr / cnt.clamp(min=1)).tolist()
    chain, run = 1.0, 1.0
    for a in acc:  # expected tokens per step of a single-chain draft (the root counts 1)
        run *= a
        chain += run
    return {"eval_accept": [round(a, 4) for a in acc], "eval_loss": [round(float(x), 4) for x in lsum / cnt.clamp(min=1)],
            "eval_chain_tokens_per_step": round(chain, 3), "eval_tokens": int(cnt[0])}


# ----------------------------------------------------------------------------- training

def _identity(config: EagleTrainConfig, dcfg: EagleConfig, fingerprint, data_hash: str, world: int) -> dict:
    keys = ("ttt_steps", "loss", "init_std", "steps", "batch_size", "seq_len", "lr", "weight_decay", "warmup",
            "min_lr_ratio", "grad_accum", "max_grad_norm", "loss_decay", "seed", "eval_fraction")
    return {"kind": "eagle", "fingerprint": fingerprint, "draft": dcfg.to_dict(), "data": data_hash,
            "world_size": world, **{k: getattr(config, k) for k in keys}}


def train_eagle(model, tokenizer, data: Sequence[Any], config: EagleTrainConfig | None = None, *,
                fingerprint: str | None = None, progress: bool = True,
                on_step: Callable[[int, dict], None] | None = None) -> EagleTrainResult:
    """Train an EAGLE-3 draft on a frozen transformers causal LM; evaluate it on a held-out split.

    ``data``: as for ``heads.train.train_heads`` (``Example``s, token lists, text, conversations)."""
    from accelerate import Accelerator

    config = config or EagleTrainConfig()
    config.validate()
    t_start = time.perf_counter()
    acc = Accelerator(device_placement=False, cpu=not torch.cuda.is_available())
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    if world > 1:
        model.to(acc.device)
    emb_w = model.get_input_embeddings().weight
    lm_w = model.get_output_embeddings().weight
    device = lm_w.device

    # ---- data (same windows, split and order as the Medusa trainer)
    examples = to_examples(tokenizer, data)
    if not examples:
        raise HeadsDataError("no usable training sequences (all empty or shorter than 2 tokens); give more / longer data")
    chunks = _chunks(examples, config.seq_len, min_offset=2)
    train, held = _split(chunks, config.eval_fraction, config.seed, config.eval_max_sequences)
    need = config.batch_size * world
    if len(train) < need:
        raise HeadsConfigError(f"only {len(train)} training sequences (after holding out {len(held)} for evaluation) "
                               f"but one batch needs {need}; lower batch_size, lower eval_fraction, or give more data")
    order = _Order(len(train), config.batch_size, world, config.seed)

    # ---- model + draft
    model.requires_grad_(False)
    model.eval()
    try:
        dcfg = EagleConfig.for_base(model.config, aux_layers=config.aux_layers,
                                    intermediate_size=config.intermediate_size)
    except EagleConfigError as e:
        raise HeadsConfigError(str(e)) from None
    draft = EagleDraft(dcfg).init_weights(config.seed, config.init_std)
    draft.to(device=device, dtype=torch.float32)  # fp32 master weights; shared tensors attached after the move
    draft.attach_base(emb_w, lm_w)
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
    lossmod = _TTTLoss(draft, config)
    lossmod, opt = acc.prepare(lossmod, opt)

    # ---- resume
    identity = _identity(config, dcfg, fingerprint, _data_hash(train), world)
    ckpt, start, history = resume_checkpoint(config, identity, "draft", draft, opt, sched)
    resumed_from = start

    def save(step: int):
        if main:
            _save(ckpt, checkpoint_state(identity, step, "draft", draft, opt, sched, history))
        acc.wait_for_everyone()

    K = config.ttt_steps
    bar = _Progress(progress and main, config.steps, start)
    tokens, t_train = 0, time.perf_counter()
    stopped_at = config.steps
    accept = [0.0] * K
    try:
        for step in range(start, config.steps):
            step_loss, corr, cnt = 0.0, torch.zeros(K), torch.zeros(K)
            for j in range(config.grad_accum):
                g = step * config.grad_accum + j
                ids, attn, tmask = _collate([train[i] for i in order.indices(g, rank)], device)
                tokens += int(attn.sum())
                last = j == config.grad_accum - 1
                sync = contextlib.nullcontext() if last or world == 1 else acc.no_sync(lossmod)
                with sync:
                    with _autocast(device, config):
                        with torch.no_grad():
                            feats, logits = base_features(model, ids, attn, dcfg.feature_layers)
                        if not _bf16(device, config):
                            feats = feats.float()
                        loss, _, c, n = lossmod(feats, ids, tmask.bool() & attn.bool(), logits)
                    acc.backward(loss / config.grad_accum)
                step_loss += float(loss.detach()) / config.grad_accum
                corr += c.detach().float().cpu()
                cnt += torch.tensor(n, dtype=torch.float32)
            if config.max_grad_norm > 0:
                acc.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if world > 1:
                stats = acc.reduce(torch.cat([torch.tensor([step_loss]), corr, cnt]).to(device), "sum").cpu()
                step_loss, corr, cnt = float(stats[0]) / world, stats[1:1 + K], stats[1 + K:]
            history.append(round(step_loss, 5))
            accept = (corr / cnt.clamp(min=1)).tolist()
            bar.update(step + 1, step_loss, accept, sched.get_last_lr()[0])
            if on_step is not None:
                on_step(step + 1, {"loss": step_loss, "accept": accept})
            out_of_time = config.max_train_s is not None and time.perf_counter() - t_train >= config.max_train_s
            if ckpt is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps
                                     or out_of_time):
                save(step + 1)
            if out_of_time:  # a time-boxed run (one GPU call): the checkpoint lets --resume go on bit for bit
                stopped_at = step + 1
                break
    finally:
        bar.close()
    train_wall = time.perf_counter() - t_train

    draft.eval()
    ev = evaluate_eagle(model, draft, held, config, device) if held else {
        "eval_accept": [], "eval_loss": [], "eval_chain_tokens_per_step": None, "eval_tokens": 0}
    tail = history[-max(1, min(50, len(history))):] if history else []
    metrics = {
        "drafter": "eagle", "draft": dcfg.to_dict(), "ttt_steps": K, "loss": config.loss, "steps": config.steps,
        "steps_done": stopped_at, "resumed_from_step": resumed_from, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
        "seq_len": config.seq_len, "lr": config.lr, "warmup": _warmup(config), "world_size": world,
        "train_sequences": len(train), "eval_sequences": len(held),
        "epochs": round(stopped_at * config.grad_accum / max(1, order.per_epoch), 3),
        "train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "train_accept": [round(a, 4) for a in accept], **ev,
        "tokens_per_s": round(tokens * world / train_wall, 1) if tokens else 0.0,
        "train_wall_s": round(train_wall, 2), "wall_s": round(time.perf_counter() - t_start, 2),
        "fingerprint": fingerprint,
    }
    if progress and main and held:
        from rich.console import Console
        Console(stderr=True).print(f"EAGLE draft on held-out data: per-step acceptance {ev['eval_accept']}, "
                                   f"chain tokens/step {ev['eval_chain_tokens_per_step']}")
    return EagleTrainResult(draft=draft, metrics=metrics, loss_history=history)
