"""``accel search-patterns``: offline search of each head's sparse pattern, written into a pack.

Parse -> calibration input -> `accel.search.run_search` (one forward pass, progress bar per layer) ->
held-out validation -> summary table -> pack (created, or merged into an existing one without touching
its heads, Medusa config or other provenance) -> optional heat-map.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Optional

import typer

from .common import command_line, err, out, parse_length, user_errors

CPU_DEFAULT_LEN = 4096     # what the 2-core CPU searches in a few minutes
GPU_DEFAULT_LEN = 32768    # MInference's calibration length


def search_patterns(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model: smollm2-135m, qwen2.5-coder-0.5b, a HF folder, a .gguf, or a cached hub id."),
    output: Path = typer.Option(..., "--output", "-o", help="Pack to write; an existing pack gets its patterns replaced, the rest kept."),
    seq_len: Optional[str] = typer.Option(None, "--seq-len", help="Calibration length (e.g. 4k, 32k). Default: min(context, 32K) on GPU, 4096 on CPU."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Your own long text (UTF-8) instead of the built-in generator."),
    kind: str = typer.Option("mixed", "--kind", help="Built-in calibration text: mixed, kv (UUID key-value retrieval) or needle."),
    pad: bool = typer.Option(False, "--pad", help="Fill a --calibration text shorter than --seq-len with the built-in haystack."),
    budget: str = typer.Option("0.1", "--budget", help="Cost of every candidate, as a fraction of dense attention at --seq-len (e.g. 0.1), or 'minference' (MInference's v=1000/s=6096 cost)."),
    target_recall: Optional[float] = typer.Option(None, "--target-recall", help="Per head, the cheapest budget of a ladder whose recall reaches this (e.g. 0.95); dense if none does."),
    dense_below: float = typer.Option(0.0, "--dense-below", help="With --budget: heads whose best recall is below this stay dense (default 0: never, like MInference)."),
    retrieval_weight: float = typer.Option(0.5, "--retrieval-weight", help="Weight of the question rows' far-key recall in a head's score (0: attention-mass recall only; 0.5 keeps needles on Qwen2.5-Coder-0.5B, results/experiments/)."),
    scaling: str = typer.Option("proportional", "--scaling", help="How the runtime adapts sizes to other prompt lengths: proportional or absolute (MInference)."),
    dense_tail: int = typer.Option(0, "--dense-tail", help="Rows at the end of every prompt (its question) that the runtime computes with exact attention over all keys (e.g. 64; 0: none). Recorded in the pack. On Qwen2.5-Coder-0.5B 64 rows gained nothing on RULER's weak tasks and cost 30 ms at 31K (results/experiments/qwen-fidelity-probe-h200.json)."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="Candidate patterns, comma-separated (e.g. vertical_and_slash,stream_llm); default: every sparse kind. On Qwen2.5-Coder-0.5B the block-sparse heads cost most of the book perplexity (results/experiments/qwen-ppl-probe-h200.json)."),
    block: int = typer.Option(64, "--block", help="Kernel block size (keep 64 unless testing)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG heat-map of each head's pattern, recall and density."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Dense vs sparse next-token agreement and KL on held-out text."),
    seed: int = typer.Option(0, "--seed", help="Seed of the built-in calibration text."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a model folder's own Python code (off unless asked for)."),
):
    """Search every head's best sparse-attention pattern (equal kernel cost, attention-mass recall) into a pack."""
    with user_errors():
        from ..runtime.errors import AccelError, PackError
        from ..runtime.files import check_output
        from ..runtime.models import load_model
        from ..runtime.pack import Pack, load_pack, save_pack
        from ..search import (SearchConfig, calibration_ids, held_out_ids, minference_budget,
                                  run_search, user_text_ids, validate as run_validation)
        from ..search.calibration import KINDS

        if kind not in KINDS:
            raise AccelError(f"--kind {kind!r} unknown: use one of {', '.join(KINDS)}")
        kind_names = _kinds(kinds)   # before the model loads: a typo fails at once
        text = None
        if calibration is not None:
            if not calibration.is_file():
                raise AccelError(f"calibration file not found: {calibration}")
            try:
                text = calibration.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise AccelError(f"{calibration} is not UTF-8 text: convert it (iconv -t utf-8) or pick another file") from None
            if not text.strip():
                raise AccelError(f"{calibration} is empty: give a long text, or drop --calibration for the built-in one")
        # before the slow part: --output must be writable, not the calibration text, not a FIFO ...
        check_output(output, inputs=[calibration], what="--output", create_parents=True)
        base = None
        if output.exists():
            base = load_pack(output)  # fail before the slow part if --output is not a pack

        lm = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        if base is not None and base.fingerprint != lm.fingerprint:
            raise PackError(f"{output} was built for {base.base_model or 'another model'} (fingerprint {base.fingerprint}), "
                            f"not {lm.name} ({lm.fingerprint}): choose another --output")
        ctx = lm.context_length
        on_gpu = next(lm.model.parameters()).is_cuda
        n = parse_length(seq_len) if seq_len else min(ctx, GPU_DEFAULT_LEN if on_gpu else CPU_DEFAULT_LEN)
        if n > ctx:
            raise AccelError(f"--seq-len {n} is above {lm.name}'s context length {ctx}: use --seq-len {ctx} or less "
                             f"(patterns scale to longer prompts at run time)")
        d = lm.model.config.hidden_size // lm.model.config.num_attention_heads
        d = getattr(lm.model.config, "head_dim", None) or d
        if budget.strip().lower() == "minference":
            b = minference_budget(n, d, block)
        else:
            try:
                b = float(budget)
            except ValueError:
                raise AccelError(f"--budget {budget!r}: use a fraction of dense cost like 0.1, or 'minference'") from None
        cfg = SearchConfig(seq_len=n, budget=b, target_recall=target_recall, block=block,
                           dense_below=dense_below, scaling=scaling, retrieval_weight=retrieval_weight,
                           dense_tail=dense_tail, kinds=kind_names)
        cfg.check()

        if text is not None:
            ids = user_text_ids(lm.tokenizer, text, n, pad=pad, source=str(calibration), seed=seed)
            calib = {"source": str(calibration), "padded": pad}
        else:
            ids = calibration_ids(lm.tokenizer, n, kind=kind, seed=seed)
            calib = {"source": "built-in", "kind": kind, "seed": seed}
        calib["seq_len"] = n

        result = _search_with_progress(lm.model, ids, cfg, run_search)
        if validate:
            held, how = held_out_ids(lm.tokenizer, n, text=text, kind=kind, seed=seed)
            err.print(f"validating on held-out text ({how}): dense vs sparse ...")
            result.validation = {**run_validation(lm.model, held, result), "text": how}

        _print_summary(result)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        prov = dict(base.provenance) if base is not None else {}
        prov.setdefault("accel_version", _version())
        prov.setdefault("date", now)
        prov.setdefault("commands", {})["search_patterns"] = command_line()
        prov["search_patterns"] = {
            "command": command_line(), "date": now, "accel_version": _version(),
            "device": str(next(lm.model.parameters()).device), "dtype": str(next(lm.model.parameters()).dtype),
            "calibration": calib, "seconds": round(result.seconds, 1),
            "candidates_per_layer": result.candidates_per_layer,
            "summary": result.summary(), "validation": result.validation,
        }
        info = result.patterns_info()
        if base is not None:
            base.patterns, base.patterns_info, base.provenance = result.minference(), info, prov
            pack = base
        else:
            pack = Pack(base_model=lm.name, fingerprint=lm.fingerprint, patterns=result.minference(),
                        patterns_info=info, provenance=prov)
        save_pack(pack, output)
        err.print(f"wrote {output} ({'merged into the existing pack' if base is not None else 'new pack'}); "
                  f"`accel pack export --format minference` gives MInference's config")
        if plot is not None:
            from ..bench.pattern_plot import plot_patterns

            plot_patterns(result, plot, title=f"{lm.name} @ {n} tokens")
            err.print(f"wrote {plot}")


def _search_with_progress(model, ids, cfg, run_search):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]searching[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"{cfg.seq_len} tokens", total=None)

        def on_layer(i, L, pats, dens):
            rec = sum(p.score for p in pats) / len(pats)
            bar.update(task, total=L, advance=1,
                       description=f"{cfg.seq_len} tokens · layer {i}: recall {rec:.3f}, density {sum(dens) / len(dens):.3f}")

        return run_search(model, ids, cfg, on_layer=on_layer)


def _print_summary(result) -> None:
    from rich.table import Table

    from ..kernels import PATTERNS

    names = tuple(PATTERNS)
    t = Table(title=f"search-patterns: {result.config.seq_len} tokens, "
                    + (f"target recall {result.config.target_recall}" if result.config.target_recall is not None
                       else f"budget {result.config.budget:.3g} of dense"))
    for col in ("layer", *(kind.label for kind in PATTERNS.values()), "mean recall", "min recall", "density"):
        t.add_column(col, justify="right")
    for li, (layer, dens) in enumerate(zip(result.layers, result.density)):
        c = [sum(p.name == n for p in layer) for n in names]
        r = [p.score for p in layer]
        t.add_row(str(li), *map(str, c), f"{sum(r) / len(r):.3f}", f"{min(r):.3f}", f"{sum(dens) / len(dens):.3f}")
    s = result.summary()
    t.add_row("all", *(str(s["counts"].get(n, 0)) for n in names), f"{s['mean_recall']:.3f}",
              f"{s['min_recall']:.3f}", f"{s['mean_density']:.3f}", style="bold")
    out.print(t)
    line = f"searched in {result.seconds:.1f} s ({result.candidates_per_layer} candidates per layer)"
    v = result.validation
    if v:
        line += (f"; held-out validation: top-1 agreement {v['top1_agreement']:.4f}, KL {v['kl']:.5f} "
                 f"(last {v['rows']} positions), mean density {v['mean_density']:.3f}")
    out.print(line)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("accel")
    except Exception:
        return "0+unknown"


def _kinds(spec: Optional[str]):
    """--kinds text -> canonical pattern names (aliases accepted), or None for every kind."""
    if spec is None:
        return None
    from ..kernels import PATTERNS
    from ..runtime.errors import AccelError

    names = [x.strip() for x in spec.split(",") if x.strip()]
    by_alias = {a: n for n, k in PATTERNS.items() if not k.dense for a in (n, *getattr(k, "aliases", ()))}
    bad = [x for x in names if x not in by_alias]
    if bad or not names:
        sparse = [n for n, k in PATTERNS.items() if not k.dense]
        raise AccelError(f"--kinds {spec!r}: use one or more of {', '.join(sparse)}, comma-separated")
    return tuple(dict.fromkeys(by_alias[x] for x in names))
