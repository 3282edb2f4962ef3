"""Medusa-1 training: frozen base model, K heads, loss Σ_k decay^k · CE_k.

Design
- Offsets: the base ``lm_head`` at position t predicts token t+1; head k (0-based) at position t predicts
  token t+k+2. A head's loss at t counts only if its target token is marked in the example's mask (the
  continuation of self-distilled data), so the prompt is context, never a target.
- The base model is frozen (``requires_grad_(False)``, never given to the optimizer) and run under
  ``torch.no_grad`` on the fly; its final-norm output (``base_model(...).last_hidden_state``, what
  ``lm_head`` consumes) feeds the heads. bf16 autocast on CUDA; fp32 master weights for the heads.
- Memory: logits are (tokens × vocab) per head, the big tensor here. Each head's projection + CE runs under
  activation checkpointing on the *target positions only*, so at most one head's logits live at a time
  (a 135M model at batch 16 × 512 needs a few GB).
- Data order is a pure function of (seed, step): sequences are cut into ``seq_len`` windows, split into
  train / held-out, and every epoch uses ``randperm(seed, epoch)``. A checkpoint therefore only needs the
  step, heads, optimizer, scheduler and RNG states to continue a killed run bit-for-bit.
- Multi-GPU: ``accelerate launch`` of the same code is data-parallel (``Accelerator`` wraps the loss
  module in DDP; ``batch_size`` is per device, each rank takes its own slice of every global batch).
- Checkpoints (``checkpoint_dir/checkpoint.pt``) are written atomically (``runtime.files.atomic_write``) and carry an
  identity (fingerprint, head shape, schedule, data hash); resuming from a different one is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .data import Example, HeadsDataError, HeadsError, to_examples
from ..runtime.drafters.medusa_heads import MedusaConfig, MedusaHeads
from ..runtime.files import atomic_write

__all__ = ["TrainConfig", "TrainResult", "train_heads", "evaluate_heads", "head_loss",
           "HeadsCheckpointError", "HeadsConfigError"]

_CKPT_NAME = "checkpoint.pt"
_CKPT_VERSION = 1


class HeadsConfigError(HeadsError):
    """Training settings that cannot work (bad values, too little data for the batch)."""


class HeadsCheckpointError(HeadsError):
    """A checkpoint that cannot be read or belongs to a different model / configuration."""


@dataclass
class TrainConfig:
    num_heads: int = 4
    num_layers: int = 1
    projection: str = "shared"      # "shared" (frozen base lm_head) | "own" (per-head copy, trained)
    steps: int = 2000               # optimizer steps
    batch_size: int = 16            # sequences per micro-batch per device
    seq_len: int = 512              # longer sequences are cut into windows of this many tokens
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 50                # linear warm-up steps, then cosine to min_lr_ratio · lr
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float = 1.0      # 0 disables clipping
    loss_decay: float = 0.8         # head k's loss weight is loss_decay ** k
    checkpoint_dir: str | None = None
    checkpoint_every: int = 200
    resume: bool = False            # continue from checkpoint_dir/checkpoint.pt if it exists
    seed: int = 0
    eval_fraction: float = 0.05     # held-out share of the data (whole examples when there are >= 10)
    eval_max_sequences: int = 512
    eval_batch_size: int | None = None  # default: batch_size
    topk: int = 10                  # ranks tracked for the acceptance statistics
    precision: str = "auto"         # "auto" (bf16 autocast on CUDA) | "bf16" | "fp32"

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise HeadsConfigError(msg)
        need(self.projection in ("shared", "own"), f"projection must be 'shared' or 'own', got {self.projection!r}")
        need(self.num_heads >= 1, "num_heads must be >= 1")
        need(self.num_layers >= 0, "num_layers must be >= 0")
        need(self.steps >= 1, "steps must be >= 1")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        need(self.seq_len >= self.num_heads + 2,
             f"seq_len {self.seq_len} is too short for {self.num_heads} heads; use at least {self.num_heads + 2}")
        check_schedule(self, need)
        need(self.topk >= 1, "topk must be >= 1")


def check_schedule(cfg, need) -> None:
    """The checks every trainer's config shares (Medusa's here, EAGLE's in eagle_train): optimiser
    schedule, held-out share, checkpointing, precision. ``need(ok, msg)`` raises the trainer's error."""
    need(cfg.lr > 0, "lr must be > 0")
    need(cfg.warmup >= 0, "warmup must be >= 0")
    need(0.0 <= cfg.eval_fraction < 1.0, "eval_fraction must be in [0, 1)")
    need(cfg.checkpoint_every >= 1, "checkpoint_every must be >= 1")
    need(not cfg.resume or bool(cfg.checkpoint_dir), "resume needs a checkpoint_dir to resume from")
    need(cfg.precision in ("auto", "bf16", "fp32"), "precision must be 'auto', 'bf16' or 'fp32'")


@dataclass
class TrainResult:
    heads: MedusaHeads
    metrics: dict                             # JSON-able: per-head top1/top5, losses, tokens_per_s, wall_s, ...
    rank_acceptance: list[list[float]]        # [k][r]: P(true token is head k's rank-r candidate), r < topk
    loss_history: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- loss

def _targets(ids: torch.Tensor, tmask: torch.Tensor, k: int):
    """Positions t whose head-k target t+k+2 is a training target: (valid (B, T-k-2) bool, targets)."""
    off = k + 2
    return tmask[:, off:], ids[:, off:]


class _HeadLoss(nn.Module):
    """The DDP-wrapped unit: hidden states in, weighted loss + per-head stats out.

    Holds the heads' trainable modules only; the shared lm_head is kept in a plain list so DDP neither
    registers nor re-broadcasts that (V, H) buffer."""

    def __init__(self, heads: MedusaHeads, decay: float):
        super().__init__()
        self.blocks, self.decay = heads.blocks, decay
        self.lm_heads = heads.lm_heads if heads.config.projection == "own" else None  # registered for DDP
        self._heads = [heads]  # a plain list: DDP must not register the shared (V, H) buffer

    def _proj_ce(self, k: int, h: torch.Tensor, tgt: torch.Tensor):
        logits = self._heads[0].project(k, h).float()  # the same modules as self.lm_heads
        ce = F.cross_entropy(logits, tgt, reduction="sum")
        correct = (logits.detach().argmax(-1) == tgt).sum()
        return ce, correct

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, tmask: torch.Tensor):
        T = hidden.shape[1]
        total = hidden.new_zeros((), dtype=torch.float32)
        losses, correct, counts = [], [], []
        for k, block in enumerate(self.blocks):
            valid, tgt = _targets(ids, tmask, k)
            hk = hidden[:, : T - k - 2][valid]          # only rows with a target: cheaper, and no pad logits
            tk = tgt[valid]
            # recomputed in backward: only one head's (rows, vocab) logits are alive at a time
            ce, corr = checkpoint(self._proj_ce, k, block(hk), tk, use_reentrant=False)
            n = tk.numel()
            loss_k = ce / max(n, 1)
            total = total + (self.decay ** k) * loss_k
            losses.append(loss_k.detach())
            correct.append(corr)
            counts.append(n)
        return total, torch.stack(losses), torch.stack(correct), counts


def head_loss(heads: MedusaHeads, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
              decay: float = 0.8) -> torch.Tensor:
    """Σ_k decay^k · mean CE of head k, head k at position t predicting ``ids[t + k + 2]``.

    ``mask`` (B, T) marks target tokens (default: all). Public so tests can check it against a naive loop."""
    tmask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    return _HeadLoss(heads, decay)(hidden, ids, tmask)[0]


# ----------------------------------------------------------------------------- data

@dataclass
class _Chunk:
    ids: list[int]
    mask: list[int]
    src: int


def _chunks(examples: Sequence[Example], seq_len: int, min_offset: int) -> list[_Chunk]:
    out = []
    for i, ex in enumerate(examples):
        for s in range(0, len(ex.ids), seq_len):
            ids, mask = ex.ids[s: s + seq_len], ex.mask[s: s + seq_len]
            if any(mask[min_offset:]):   # at least one target for head 0
                out.append(_Chunk(ids, mask, i))
    return out


def _split(chunks: list[_Chunk], frac: float, seed: int, cap: int) -> tuple[list[_Chunk], list[_Chunk]]:
    if frac <= 0 or len(chunks) < 2:
        return chunks, []
    rng = random.Random(seed)
    srcs = sorted({c.src for c in chunks})
    if len(srcs) >= 10:        # hold out whole examples: no prompt appears on both sides
        held = set(rng.sample(srcs, max(1, round(frac * len(srcs)))))
        train = [c for c in chunks if c.src not in held]
        ev = [c for c in chunks if c.src in held]
    else:                      # few long texts: hold out windows
        idx = set(rng.sample(range(len(chunks)), min(len(chunks) - 1, max(1, round(frac * len(chunks))))))
        train = [c for i, c in enumerate(chunks) if i not in idx]
        ev = [c for i, c in enumerate(chunks) if i in idx]
    return train, ev[:cap]


def _collate(chunks: Sequence[_Chunk], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, target mask (pads are never targets)."""
    T = max(len(c.ids) for c in chunks)
    ids = torch.zeros((len(chunks), T), dtype=torch.long)
    attn = torch.zeros((len(chunks), T), dtype=torch.long)
    tmask = torch.zeros((len(chunks), T), dtype=torch.bool)
    for i, c in enumerate(chunks):
        n = len(c.ids)
        ids[i, :n] = torch.tensor(c.ids)
        attn[i, :n] = 1
        tmask[i, :n] = torch.tensor(c.mask, dtype=torch.bool)
    return ids.to(device), attn.to(device), tmask.to(device)


def _data_hash(chunks: Sequence[_Chunk]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(repr((c.ids, c.mask)).encode())
    return h.hexdigest()[:16]


class _Order:
    """Which train chunks micro-batch g of rank r gets: a function of (seed, g) only."""

    def __init__(self, n: int, batch: int, world: int, seed: int):
        self.n, self.batch, self.world, self.seed = n, batch, world, seed
        self.per_epoch = n // (batch * world)
        self._epoch, self._perm = -1, None

    def indices(self, g: int, rank: int) -> list[int]:
        epoch, b = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen).tolist()
        start = (b * self.world + rank) * self.batch
        return self._perm[start: start + self.batch]


# ----------------------------------------------------------------------------- base model access

def base_hidden(model, ids: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
    """The final-norm hidden states (what ``lm_head`` consumes), (B, T, H)."""
    body = getattr(model, "base_model", None)
    if body is not None and body is not model:
        return body(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
    out = model(input_ids=ids, attention_mask=attn, use_cache=False, output_hidden_states=True)
    return out.hidden_states[-1]


def _bf16(device: torch.device, config: TrainConfig) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")


def _autocast(device: torch.device, config: TrainConfig):
    if _bf16(device, config):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_heads(model, heads: MedusaHeads, chunks: Sequence[_Chunk | Example], config: TrainConfig,
                   device=None) -> tuple[dict, list[list[float]]]:
    """Per-head top-1/top-5 accuracy, CE and rank-acceptance (share of targets at rank r of the top-k)."""
    device = device or next(heads.parameters()).device
    chunks = [c if isinstance(c, _Chunk) else _Chunk(c.ids, c.mask, 0) for c in chunks]
    K, V = heads.config.num_heads, heads.config.vocab_size
    topk = min(config.topk, V)
    hits = torch.zeros((K, topk), dtype=torch.float64)
    ce = torch.zeros(K, dtype=torch.float64)
    n = torch.zeros(K, dtype=torch.float64)
    was = heads.training
    heads.eval()
    bs = config.eval_batch_size or config.batch_size
    for b in range(0, len(chunks), bs):
        ids, attn, tmask = _collate(chunks[b: b + bs], device)
        with _autocast(device, config):
            hidden = base_hidden(model, ids, attn)
            if not _bf16(device, config):  # e.g. a bf16 model on CPU: match the fp32 heads
                hidden = hidden.float()
            T = hidden.shape[1]
            for k, block in enumerate(heads.blocks):
                valid, tgt = _targets(ids, tmask, k)
                tk = tgt[valid]
                if tk.numel() == 0:
                    continue
                logits = heads.project(k, block(hidden[:, : T - k - 2][valid])).float()
                ce[k] += F.cross_entropy(logits, tk, reduction="sum").item()
                top = logits.topk(topk, dim=-1).indices
                hits[k] += (top == tk[:, None]).sum(0).double().cpu()
                n[k] += tk.numel()
    heads.train(was)
    rate = hits / n.clamp(min=1)[:, None]
    metrics = {
        "top1": [round(float(r[0]), 4) for r in rate],
        "top5": [round(float(r[: min(5, topk)].sum()), 4) for r in rate],
        "eval_loss": [round(float(x), 4) for x in ce / n.clamp(min=1)],
        "eval_tokens": int(n[0].item()) if K else 0,
    }
    return metrics, [[float(x) for x in r] for r in rate]


def _print_table(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Medusa heads on held-out data")
    for col in ("head", "predicts", "top-1", "top-5", "CE"):
        t.add_column(col, justify="right")
    for k, (a1, a5, l) in enumerate(zip(metrics["top1"], metrics["top5"], metrics["eval_loss"])):
        t.add_row(str(k), f"t+{k + 2}", f"{a1:.3f}", f"{a5:.3f}", f"{l:.3f}")
    Console().print(t)


# ----------------------------------------------------------------------------- checkpoints

def _identity(config: TrainConfig, heads_cfg: MedusaConfig, fingerprint: str | None, data_hash: str,
              world: int) -> dict:
    keys = ("steps", "batch_size", "seq_len", "lr", "weight_decay", "warmup", "min_lr_ratio", "grad_accum",
            "max_grad_norm", "loss_decay", "seed", "eval_fraction")
    return {"fingerprint": fingerprint, "heads": heads_cfg.to_dict(), "data": data_hash, "world_size": world,
            **{k: getattr(config, k) for k in keys}}



def resume_checkpoint(config, identity: dict, key: str, module, opt, sched):
    """The checkpoint path, and (step, loss history) to start from: restores ``module`` (saved under
    ``key``), the optimizer, the scheduler and the RNG streams when ``config.resume`` finds a checkpoint of
    the same run (``identity``). Shared by the Medusa and EAGLE trainers, so resume is bit-exact for both."""
    ckpt = Path(config.checkpoint_dir) / _CKPT_NAME if config.checkpoint_dir else None
    if not (config.resume and ckpt is not None and ckpt.exists()):
        return ckpt, 0, []
    state = _load(ckpt, identity)
    module.load_state_dict(state[key])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return ckpt, int(state["step"]), list(state.get("loss_history", []))


def checkpoint_state(identity: dict, step: int, key: str, module, opt, sched, history: list, **extra) -> dict:
    """What a checkpoint holds: the module under ``key``, optimizer, scheduler, RNG streams, loss history."""
    return {"version": _CKPT_VERSION, "identity": identity, "step": step, key: module.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(),
            "loss_history": history, **extra}

def _save(path: Path, state: dict) -> None:
    # atomic (runtime.files): a kill leaves either the old or the new checkpoint, never half of one
    atomic_write(path, lambda tmp: torch.save(state, tmp), what="checkpoint", create_parents=True)


def _load(path: Path, identity: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / foreign file
        raise HeadsCheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}); delete it or pass "
                                   "another checkpoint dir") from None
    old = state.get("identity", {}) if isinstance(state, dict) else {}
    for k, v in identity.items():
        if old.get(k) != v:
            raise HeadsCheckpointError(
                f"checkpoint {path} was made for a different run ({k}: {old.get(k)!r} there, {v!r} now); "
                "use the original settings, or a fresh checkpoint dir / no resume")
    return state


def _rng_state() -> dict:
    s = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


# ----------------------------------------------------------------------------- progress

class _Progress:
    def __init__(self, enabled: bool, total: int, start: int):
        self.p = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
            self.p.start()
            self.t = self.p.add_task("training heads", total=total, completed=start, info="")

    def update(self, step: int, loss: float, top1: list[float], lr: float):
        if self.p:
            acc = " ".join(f"{a:.2f}" for a in top1)
            self.p.update(self.t, completed=step, info=f"loss {loss:.3f} | top-1 {acc} | lr {lr:.2e}")

    def close(self):
        if self.p:
            self.p.stop()


# ----------------------------------------------------------------------------- training

def _warmup(config: TrainConfig) -> int:
    return min(config.warmup, config.steps // 2)  # short runs (tests, smoke runs) still get a cosine phase


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    warm = _warmup(config)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        span = max(1, config.steps - warm)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cos
    return f


def train_heads(model, tokenizer, data: Sequence[Any], config: TrainConfig | None = None, *,
                fingerprint: str | None = None, progress: bool = True,
                on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train Medusa heads on a frozen causal LM and evaluate them on a held-out split.

    ``data``: ``Example``s (e.g. from ``self_distill``), token id lists, strings, or ``{"messages": ...}``
    dicts (see ``data.to_examples``). ``fingerprint`` identifies the base model (checkpoint compatibility,
    provenance). ``on_step(step, info)`` is called after every optimizer step (raise in it to stop).
    """
    from accelerate import Accelerator

    config = config or TrainConfig()
    config.validate()
    t_start = time.perf_counter()

    acc = Accelerator(device_placement=False, cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    main = acc.is_main_process
    if world > 1:  # data-parallel: every rank holds the frozen base on its own device
        model.to(acc.device)
    lm_w = model.get_output_embeddings().weight
    device = lm_w.device

    # ---- data
    examples = to_examples(tokenizer, data)
    if not examples:
        raise HeadsDataError("no usable training sequences (all empty or shorter than 2 tokens); "
                             "give more / longer data")
    chunks = _chunks(examples, config.seq_len, min_offset=2)
    train, held = _split(chunks, config.eval_fraction, config.seed, config.eval_max_sequences)
    need = config.batch_size * world
    if len(train) < need:
        raise HeadsConfigError(
            f"only {len(train)} training sequences (after holding out {len(held)} for evaluation) but one "
            f"batch needs {need}; lower batch_size, lower eval_fraction, or give more data")
    order = _Order(len(train), config.batch_size, world, config.seed)
    micro_total = config.steps * config.grad_accum

    # ---- model + heads
    model.requires_grad_(False)  # frozen: no grads, no optimizer state
    model.eval()
    hcfg = MedusaConfig(config.num_heads, config.num_layers, model.config.hidden_size, lm_w.shape[0],
                        config.projection)
    heads = MedusaHeads(hcfg, lm_w)
    # fp32 master weights on the base's device; a shared lm_head stays the base's own tensor (no copy)
    heads.blocks.to(device=device, dtype=torch.float32)
    if config.projection == "own":
        heads.lm_heads.to(device=device, dtype=torch.float32)
    params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
    lossmod = _HeadLoss(heads, config.loss_decay)
    # the scheduler stays ours: accelerate's wrapper would step it once per process
    lossmod, opt = acc.prepare(lossmod, opt)

    # ---- resume
    identity = _identity(config, hcfg, fingerprint, _data_hash(train), world)
    ckpt, start, history = resume_checkpoint(config, identity, "heads", heads, opt, sched)
    resumed_from = start

    def save(step: int):
        if main:
            _save(ckpt, checkpoint_state(identity, step, "heads", heads, opt, sched, history,
                                         data_state={"seed": config.seed, "micro_batches_done": step * config.grad_accum,
                                                     "epoch": (step * config.grad_accum) // order.per_epoch}))
        acc.wait_for_everyone()

    bar = _Progress(progress and main, config.steps, start)
    tokens, t_train = 0, time.perf_counter()
    top1 = [0.0] * config.num_heads
    try:
        for step in range(start, config.steps):
            step_loss, corr, cnt = 0.0, torch.zeros(config.num_heads), torch.zeros(config.num_heads)
            for j in range(config.grad_accum):
                g = step * config.grad_accum + j
                ids, attn, tmask = _collate([train[i] for i in order.indices(g, rank)], device)
                tokens += int(attn.sum())
                last = j == config.grad_accum - 1
                sync = contextlib.nullcontext() if last or world == 1 else acc.no_sync(lossmod)
                with sync:
                    with _autocast(device, config):
                        with torch.no_grad():
                            hidden = base_hidden(model, ids, attn)
                        if not _bf16(device, config):
                            hidden = hidden.float()
                        loss, _, c, n = lossmod(hidden, ids, tmask.bool() & attn.bool())
                    acc.backward(loss / config.grad_accum)
                step_loss += float(loss.detach()) / config.grad_accum
                corr += c.detach().float().cpu()
                cnt += torch.tensor(n, dtype=torch.float32)
            if config.max_grad_norm > 0:
                acc.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if world > 1:  # log the global batch, not this rank's slice
                stats = acc.reduce(torch.cat([torch.tensor([step_loss]), corr, cnt]).to(device), "sum").cpu()
                step_loss, corr, cnt = float(stats[0]) / world, stats[1:1 + len(corr)], stats[1 + len(corr):]
            history.append(round(step_loss, 5))
            top1 = (corr / cnt.clamp(min=1)).tolist()
            bar.update(step + 1, step_loss, top1, sched.get_last_lr()[0])
            if on_step is not None:
                on_step(step + 1, {"loss": step_loss, "top1": top1})
            if ckpt is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
                save(step + 1)
    finally:
        bar.close()
    train_wall = time.perf_counter() - t_train

    # ---- evaluation
    heads.eval()
    ev_metrics, rank_acc = evaluate_heads(model, heads, held, config, device) if held else (
        {"top1": [], "top5": [], "eval_loss": [], "eval_tokens": 0}, [])
    tail = history[-max(1, min(50, len(history))):] if history else []
    metrics = {
        "num_heads": config.num_heads, "num_layers": config.num_layers, "projection": config.projection,
        "steps": config.steps, "resumed_from_step": resumed_from, "batch_size": config.batch_size,
        "grad_accum": config.grad_accum, "seq_len": config.seq_len, "lr": config.lr, "warmup": _warmup(config), "world_size": world,
        "train_sequences": len(train), "eval_sequences": len(held),
        "epochs": round(micro_total / max(1, order.per_epoch), 3),
        "train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        **ev_metrics,
        "tokens_per_s": round(tokens * world / train_wall, 1) if tokens else 0.0,
        "train_wall_s": round(train_wall, 2),
        "wall_s": round(time.perf_counter() - t_start, 2),
        "fingerprint": fingerprint,
    }
    if progress and main and held:
        _print_table(ev_metrics)
    return TrainResult(heads=heads, metrics=metrics, rank_acceptance=rank_acc, loss_history=history)
