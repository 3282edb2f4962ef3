"""``accel train-heads``: self-distil data, train a drafter on the frozen model.

``--drafter medusa`` (default): Medusa heads, written into the pack. ``--drafter eagle``: an EAGLE-3 draft
layer (training-time test), written INTO a pack with ``--pack P`` (P's patterns kept; ``accel generate --pack``
decodes with it), else as its own drafter file; ``--export-eagle3 DIR`` also writes it in the SGLang / vLLM
layout (``accel pack export --format eagle3`` does the same from a pack)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer

from .common import command_line, err, user_errors


def train_heads(
    output: Path = typer.Option(..., "--output", "-o", help="Pack to write (heads are added; patterns already there are kept)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    pack: Optional[Path] = typer.Option(None, "--pack", help="Existing pack to start from (default: --output if it exists)."),
    num_heads: int = typer.Option(4, "--num-heads", min=1, max=16),
    num_layers: int = typer.Option(1, "--num-layers", min=0, max=8, help="ResBlocks per head."),
    shared_lm_head: bool = typer.Option(True, "--shared-lm-head/--own-lm-head", help="Reuse the frozen base lm_head (small pack) or give each head its own."),
    steps: int = typer.Option(1000, "--steps", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    seq_len: int = typer.Option(512, "--seq-len", min=8),
    lr: Optional[float] = typer.Option(None, "--lr", help="Default: 1e-3 (medusa), 3e-4 (eagle)."),
    warmup: int = typer.Option(50, "--warmup", min=0),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL prompts to self-distil (default: the built-in set)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Train on this text / JSONL conversations instead of self-distillation."),
    distill_tokens: int = typer.Option(256, "--distill-tokens", min=1, help="New tokens per self-distilled answer."),
    distill_batch_size: int = typer.Option(64, "--distill-batch-size", min=1),
    distill_samples: int = typer.Option(0, "--distill-samples", min=0, help="Extra sampled answers per prompt (more, varied data) besides the greedy one."),
    distill_temperature: float = typer.Option(0.7, "--distill-temperature", min=0.0),
    tree_nodes: int = typer.Option(63, "--tree-nodes", min=1, max=1024, help="Size of the Medusa candidate tree built from the measured accuracies."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Default: OUTPUT.ckpt/"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its checkpoint."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Add to a pack whose fingerprint does not match the model."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a model folder's own Python code (off unless asked for)."),
    drafter: str = typer.Option("medusa", "--drafter", help="medusa (heads in the pack) | eagle (EAGLE-3 draft layer)."),
    ttt_steps: int = typer.Option(5, "--ttt-steps", min=1, max=16, help="eagle: draft steps unrolled in training (training-time test)."),
    eagle_loss: str = typer.Option("kl", "--eagle-loss", help="eagle: kl (base distribution) | ce (base argmax)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="eagle: stop the training loop after this many minutes (checkpointed; --resume continues)."),
    export_eagle3: Optional[Path] = typer.Option(None, "--export-eagle3", help="eagle: also write the draft in the EAGLE-3 layout SGLang / vLLM load (a folder)."),
):
    """Train a drafter (Medusa heads or an EAGLE-3 draft layer) on the frozen base model."""
    with user_errors():
        from ..runtime.errors import AccelError

        if drafter not in ("medusa", "eagle"):
            raise AccelError(f"--drafter must be 'medusa' or 'eagle', got {drafter!r}")
        if drafter == "eagle":
            return _train_eagle(output, model, pack, steps, batch_size, seq_len, 3e-4 if lr is None else lr, warmup, grad_accum, prompts,
                                data, distill_tokens, distill_batch_size, distill_samples, distill_temperature,
                                checkpoint_dir, checkpoint_every, resume, seed, force, device, dtype, ttt_steps,
                                eagle_loss, export_eagle3, trust_remote_code, max_minutes)
        if export_eagle3 is not None:
            raise AccelError("--export-eagle3 needs --drafter eagle")
        if max_minutes is not None:
            raise AccelError("--max-minutes needs --drafter eagle (Medusa training is bounded by --steps)")
        lr = 1e-3 if lr is None else lr
        from ..heads.train import TrainConfig
        from ..heads.train import train_heads as run_training
        from ..runtime.files import check_output
        from ..runtime.pack import Pack, load_pack, save_pack

        _check_data_args(prompts, data)
        # before the slow part: --output must be writable and not one of the data files (it may be --pack: merge)
        check_output(output, inputs=[prompts, data], what="--output", create_parents=True)
        base_path = pack or (output if output.exists() else None)
        base = load_pack(base_path) if base_path is not None else None  # fail before the slow parts
        cfg = TrainConfig(num_heads=num_heads, num_layers=num_layers,
                          projection="shared" if shared_lm_head else "own", steps=steps, batch_size=batch_size,
                          seq_len=seq_len, lr=lr, warmup=warmup, grad_accum=grad_accum,
                          checkpoint_dir=str(checkpoint_dir or output.with_name(output.name + ".ckpt")),
                          checkpoint_every=checkpoint_every, resume=resume, seed=seed)
        cfg.validate()
        lm, examples, data_info = _model_and_examples(model, device, dtype, trust_remote_code, base, base_path, force,
                                                      prompts, data, distill_tokens, distill_batch_size,
                                                      distill_samples, distill_temperature, seed)
        result = run_training(lm.model, lm.tokenizer, examples, cfg, fingerprint=lm.fingerprint, progress=True)
        medusa = {**result.heads.config.to_dict(), "rank_acceptance": result.rank_acceptance}
        medusa["tree"] = _tree_from(result.rank_acceptance, tree_nodes)
        provenance = dict(base.provenance) if base is not None else {}
        provenance.update(accel_version=_version(), date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        provenance.setdefault("commands", {})["train_heads"] = command_line()
        provenance["train_heads"] = {"data": data_info, "config": {k: v for k, v in vars(cfg).items() if k != "checkpoint_dir"},
                                     "metrics": result.metrics}
        out = Pack(base_model=lm.name, fingerprint=lm.fingerprint,
                   patterns=base.patterns if base is not None else None,
                   patterns_info=base.patterns_info if base is not None else {},
                   medusa=medusa, heads=result.heads.state_dict(), provenance=provenance)
        if _is_main_process():  # under `accelerate launch` every rank trained the same heads; one writes
            save_pack(out, output)
            err.print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB): {num_heads} heads, tree of {len(medusa['tree'])} nodes")
        _finish_distributed()


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # nobody exits before rank 0 has written the pack
        dist.destroy_process_group()


def _tree_from(rank_acceptance, nodes: int) -> list[list[int]]:
    from ..runtime.tree import build_tree

    return [list(p) for p in build_tree(rank_acceptance, num_nodes=nodes)]


def _version() -> str:
    from importlib.metadata import version

    try:
        return version("accel")
    except Exception:
        return "unknown"


def _examples(lm, prompts, data, distill_tokens, distill_batch_size, distill_samples, distill_temperature, seed):
    """Training examples and a JSON description of where they came from (self-distilled unless --data)."""
    from ..heads.data import load_builtin_prompts, load_data_file, load_prompt_file, self_distill, to_examples

    if data is not None:
        return to_examples(lm.tokenizer, load_data_file(data)), {"source": "data", "file": str(data)}
    plist = load_prompt_file(prompts) if prompts is not None else load_builtin_prompts()
    err.print(f"self-distilling {len(plist)} prompts ({distill_tokens} new tokens each; cached)")
    examples = []
    for i in range(1 + distill_samples):  # the greedy answers, then sampled ones (each cached)
        examples += self_distill(lm.model, lm.tokenizer, plist, max_new_tokens=distill_tokens,
                                 batch_size=distill_batch_size, fingerprint=lm.fingerprint, seed=seed + i,
                                 temperature=0.0 if i == 0 else distill_temperature, progress=True)
    return examples, {"source": "self-distillation", "prompts": str(prompts) if prompts else "built-in",
                      "num_prompts": len(plist), "new_tokens": distill_tokens, "sampled_answers": distill_samples,
                      "sample_temperature": distill_temperature, "examples": len(examples)}


def _check_data_args(prompts, data) -> None:
    """Both trainers: at most one data source, and it exists (before anything slow)."""
    from ..runtime.errors import AccelError

    if prompts is not None and data is not None:
        raise AccelError("pass either --prompts (self-distillation) or --data (given text), not both")
    for f in (prompts, data):
        if f is not None and not f.is_file():
            raise AccelError(f"file not found: {f}")


def _model_and_examples(model, device, dtype, trust_remote_code, base, base_path, force, prompts, data,
                        distill_tokens, distill_batch_size, distill_samples, distill_temperature, seed):
    """Both trainers: load the base model, check a given pack was made for it, build the training examples."""
    from ..runtime.models import load_model
    from ..runtime.pack import validate_for_model

    lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if base is not None:
        validate_for_model(base, lm.model, lm.fingerprint, force=force, where=f"pack {base_path}")
    examples, data_info = _examples(lm, prompts, data, distill_tokens, distill_batch_size, distill_samples,
                                    distill_temperature, seed)
    return lm, examples, data_info


def _train_eagle(output, model, pack, steps, batch_size, seq_len, lr, warmup, grad_accum, prompts, data,
                 distill_tokens, distill_batch_size, distill_samples, distill_temperature, checkpoint_dir,
                 checkpoint_every, resume, seed, force, device, dtype, ttt_steps, eagle_loss, export_dir,
                 trust_remote_code=False, max_minutes=None):
    from ..heads.eagle_train import EagleTrainConfig, train_eagle
    from ..runtime.drafters.eagle_io import export_eagle3, save_eagle
    from ..runtime.errors import AccelError
    from ..runtime.pack import load_pack

    _check_data_args(prompts, data)
    if output.is_dir():
        raise AccelError(f"--output {output} is a folder; give a file name like eagle.safetensors")
    into_pack = pack is not None  # --pack P: the draft goes INTO a pack (P's patterns kept) at --output
    if not into_pack and output.exists() and _is_pack_with_content(output):
        raise AccelError(f"--output {output} is an acceleration pack; pass --pack {output} to add the EAGLE draft "
                         "to it, or write the draft to its own file (e.g. eagle.safetensors)")
    from ..runtime.files import check_output

    # --output may be --pack itself (the draft is merged into it, atomically)
    check_output(output, inputs=[prompts, data], what="--output", create_parents=True)
    base = load_pack(pack) if pack is not None else None  # only to check the model matches
    cfg = EagleTrainConfig(ttt_steps=ttt_steps, loss=eagle_loss, steps=steps, batch_size=batch_size, seq_len=seq_len,
                           lr=lr, warmup=warmup, grad_accum=grad_accum,
                           checkpoint_dir=str(checkpoint_dir or output.with_name(output.name + ".ckpt")),
                           checkpoint_every=checkpoint_every, resume=resume, seed=seed,
                           max_train_s=None if max_minutes is None else 60.0 * max_minutes)
    cfg.validate()
    lm, examples, data_info = _model_and_examples(model, device, dtype, trust_remote_code, base, pack, force,
                                                  prompts, data, distill_tokens, distill_batch_size, distill_samples,
                                                  distill_temperature, seed)
    result = train_eagle(lm.model, lm.tokenizer, examples, cfg, fingerprint=lm.fingerprint, progress=True)
    provenance = {"accel_version": _version(),
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "commands": {"train_heads": command_line()},
                  "train_heads": {"drafter": "eagle", "data": data_info, "metrics": result.metrics,
                                  "config": {k: v for k, v in vars(cfg).items() if k != "checkpoint_dir"}}}
    if _is_main_process() and into_pack:
        from ..runtime.drafters.eagle_drafter import EagleDrafter
        from ..runtime.pack import Pack, save_pack

        dcfg, tensors = EagleDrafter(result.draft).to_pack()
        prov = {**base.provenance, **provenance, "commands": {**base.provenance.get("commands", {}),
                                                              **provenance["commands"]}}
        save_pack(Pack(lm.name, lm.fingerprint, patterns=base.patterns, patterns_info=base.patterns_info,
                       drafter=dcfg, tensors=tensors, drafter_kind="eagle", provenance=prov), output)
    elif _is_main_process():
        save_eagle(output, result.draft, fingerprint=lm.fingerprint, base_model=lm.name, provenance=provenance)
    if _is_main_process():
        m = result.metrics
        err.print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB): EAGLE draft, held-out per-step acceptance "
                  f"{m['eval_accept']}")
        if export_dir is not None:
            export_eagle3(result.draft, export_dir, base_config=lm.model.config)
            err.print(f"wrote {export_dir}/ (EAGLE-3 layout for SGLang / vLLM)")
    _finish_distributed()


def _is_pack_with_content(path) -> bool:
    """True for an existing acceleration pack (patterns or heads): never overwrite one with a draft."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return False
    return "accel.drafter.kind" not in meta and ("accel.patterns" in meta or "accel.medusa" in meta)
