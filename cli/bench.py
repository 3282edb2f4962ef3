"""``accel bench prefill|decode|quality|kernels``: measure speed and fidelity.

Each subcommand prints a rich table, and with ``--json F`` writes every figure plus device, versions,
dtype, date and the command line; ``--plot DIR`` writes PNGs. The library does the measuring
(``runtime.bench_*``, ``kernels.bench``); this module parses, calls and renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import command_line, err, out, parse_length, user_errors

app = typer.Typer(help="Measure speed and fidelity: prefill | decode | quality | kernels.", no_args_is_help=True)

_SYNTH_HELP = "Random-weight model of a real architecture: llama-3-8b, llama-2-7b, qwen2.5-7b, smollm2-135m."


def _lengths(text: str) -> list[int]:
    return [parse_length(t) for t in text.split(",") if t.strip()]


def _table(title: str, rows: list[dict], cols: list[str]) -> Table:
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*(_fmt(r.get(c)) for c in cols))
    return t


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _check_json(json_path: Optional[Path], *inputs) -> None:
    """--json is checked before the benchmark runs: a bad path fails now, not after minutes of timing."""
    if json_path is not None:
        from ..runtime.files import check_output

        check_output(json_path, inputs=inputs, what="--json", create_parents=True)


def _save(json_path: Optional[Path], payload: dict, quiet: bool = False) -> None:
    if json_path is not None:
        from ..bench.common import environment, write_json

        write_json(json_path, {"env": environment(command_line()), **payload})
        if not quiet:
            err.print(f"wrote {json_path}")


def _model_and_patterns(model, synthetic, pack, pattern, device, dtype, layers):
    """-> (hf_model, tokenizer|None, name, patterns_for(n) | None, pack|None)."""
    import torch

    from ..bench.prefill import uniform_patterns
    from ..runtime.errors import AccelError
    from ..runtime.generate import default_pack_path
    from ..runtime.models import DEFAULT_MODEL, load_model, pick_device, pick_dtype
    from ..runtime.pack import load_pack, validate_for_model

    if synthetic:
        from ..bench.synthetic import build_synthetic

        dev = pick_device(device)
        hf = build_synthetic(synthetic, device=dev, dtype=pick_dtype(dtype, dev), num_hidden_layers=layers)
        tok, name, fp = None, f"synthetic:{synthetic}", None
    else:
        lm = load_model(model, device=device, dtype=dtype)
        hf, tok, name, fp = lm.model, lm.tokenizer, lm.name, lm.fingerprint
    pk = None
    if pack is not None:
        pk = load_pack(pack)
    elif not synthetic and name == DEFAULT_MODEL and default_pack_path() is not None:
        pk = load_pack(default_pack_path())
    if pk is not None and fp is not None:
        validate_for_model(pk, hf, fp, where=f"pack {pack or 'default'}")
    L, H = hf.config.num_hidden_layers, hf.config.num_attention_heads
    if pattern:
        from ..kernels import PatternError

        try:
            pname, s1, s2 = (pattern.split(":") + ["0", "0"])[:3]
            fixed = uniform_patterns(L, H, pname, s1, s2)
        except PatternError as e:
            raise AccelError(f"bad --pattern {pattern!r}: {e}") from None
        except ValueError:
            raise AccelError(f"bad --pattern {pattern!r}: use NAME:SIZE1:SIZE2, e.g. vertical_and_slash:1000:6096") from None
        patterns_for = lambda n: fixed  # noqa: E731
    elif pk is not None and pk.has_patterns:
        if len(pk.patterns) != L:
            raise AccelError(f"the pack's patterns are for {len(pk.patterns)} layers; the model has {L}")
        from ..runtime.prefill import layer_patterns

        patterns_for = lambda n: layer_patterns(pk, n)  # noqa: E731
    else:
        fixed = uniform_patterns(L, H)
        patterns_for = lambda n: fixed  # noqa: E731
    return hf, tok, name, patterns_for, pk


def _tail(pk, pattern) -> int:
    """The pack's exact last rows (what the runtime runs); none for a --pattern given on the command line."""
    from ..runtime.prefill import dense_tail_rows

    return 0 if pattern is not None or pk is None else dense_tail_rows(pk)


@app.command("prefill")
def prefill(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help=_SYNTH_HELP),
    pack: Optional[Path] = typer.Option(None, "--pack", help="Patterns from this pack (default model: the shipped pack)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="Same pattern for every head, NAME:SIZE1:SIZE2 (default without a pack: vertical_and_slash:1000:6096)."),
    lengths: str = typer.Option("4k,8k", "--lengths", help="Comma-separated prompt lengths, e.g. 4k,32k,128k."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Synthetic models: use only this many layers."),
    rep: int = typer.Option(3, "--rep", min=1),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    json_path: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Folder for PNG plots."),
):
    """Time to first token, dense vs sparse prefill; attention work share and index-estimation share."""
    with user_errors():
        _check_json(json_path, pack)
        import torch

        from ..bench.prefill import bench_prefill
        from ..runtime.errors import AccelError
        from ..runtime.model import CompactLM, supports

        lens = _lengths(lengths)
        hf, tok, name, patterns_for, pk = _model_and_patterns(model, synthetic, pack, pattern, device, dtype, layers)
        if not supports(hf):
            raise AccelError(f"bench prefill needs a Llama-family model (the compact engine); {name} is not one")
        ctx = hf.config.max_position_embeddings
        if max(lens) > ctx and not synthetic:
            raise AccelError(f"--lengths up to {max(lens)} exceed {name}'s {ctx}-token context")
        compact = CompactLM.from_hf(hf)
        ids_for = None
        if tok is not None:
            from ..search.calibration import calibration_ids

            ids_for = lambda n: calibration_ids(tok, n).reshape(1, -1)[:, :n].to(compact.device)  # noqa: E731
        plan_for = None
        if pattern is None and pk is not None and pk.has_patterns:   # what the runtime runs for this pack
            from ..runtime.prefill import plan_prefill

            plan_for = lambda n: plan_prefill(pk, n, compact.device, override=1)  # noqa: E731
        rows = bench_prefill(compact, lens, patterns_for, ids_for=ids_for, plan_for=plan_for, rep=rep,
                             progress=lambda r: err.print(f"  {r['length']}: dense {r['dense_ms']:.1f} ms, sparse {r['sparse_ms']:.1f} ms"))
        out.print(_table(f"prefill: {name} ({compact.dtype}, {compact.device})", rows,
                         ["length", "dense_ms", "exact_ms", "sparse_ms", "speedup", "planned_dense_layers", "predicted_work", "index_density_random_qk", "index_ms", "index_share"]))
        _save(json_path, {"bench": "prefill", "model": name, "dtype": str(compact.dtype), "rows": rows})
        if plot is not None:
            from ..bench.plots import line_plot

            x = [r["length"] for r in rows]
            line_plot(plot / "prefill-latency.png", x, {"dense": [r["dense_ms"] for r in rows], "sparse": [r["sparse_ms"] for r in rows]},
                      xlabel="prompt tokens", ylabel="time to first token (ms)", title=f"prefill: {name}", logy=True)
            line_plot(plot / "prefill-speedup.png", x, {"sparse / dense": [r["speedup"] for r in rows]},
                      xlabel="prompt tokens", ylabel="speed-up", title=f"prefill speed-up: {name}")
        del torch


_RULER_LENGTHS = "4k,8k,16k,31k"


@app.command("quality")
def quality(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    pack: Optional[Path] = typer.Option(None, "--pack"),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="NAME:SIZE1:SIZE2 for every head instead of the pack's patterns."),
    suite: str = typer.Option("needle", "--suite", help="needle: needle grid + perplexity + Medusa exactness; ruler: RULER-style tasks x lengths + perplexity."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help=f"Prompt lengths (default: needle 1k,2k,4k; ruler {_RULER_LENGTHS}, those that fit the model's context)."),
    samples: int = typer.Option(50, "--samples", min=1, help="ruler: cases per task and length."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="ruler: comma-separated tasks (default: all 11: niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe)."),
    batch: int = typer.Option(8, "--batch", min=1, help="ruler: cases per batch, prefilled as one (B, N) forward per mode (same length, no padding); the KV cache holds 2 x batch rows (dense and sparse decode together)."),
    seed: int = typer.Option(0, "--seed", help="ruler: case seed."),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=1, help="ruler: wall-clock budget for the cases, split over lengths by token count and evenly over tasks; a task stops adding batches when its share is spent (each row says how many cases ran)."),
    depths: str = typer.Option("0,0.25,0.5,0.75,1", "--depths"),
    trials: int = typer.Option(2, "--trials", min=1),
    ppl_length: Optional[str] = typer.Option(None, "--ppl-length", help="Perplexity length(s), comma-separated (default: needle 4k; ruler the suite's lengths; 0 skips)."),
    ppl_text: Optional[str] = typer.Option(None, "--ppl-text", help="ruler: perplexity text(s), comma-separated (default: book,docs): book = one continuous public-domain novel (Natsume's Botchan, English), docs = the Python documentation's paragraphs in a seeded order (repeats passages at long range)."),
    medusa_prompts: int = typer.Option(8, "--medusa-prompts", min=0, help="Held-out chat prompts (heads/heldout_prompts.jsonl) for the Medusa exactness check (0 skips)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    json_path: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot"),
):
    """Fidelity of forced sparse prefill vs dense: needle grid or RULER suite, perplexity; Medusa == plain greedy."""
    with user_errors():
        _check_json(json_path, pack)
        from rich.progress import Progress

        from ..bench.quality import medusa_exactness, needle_grid, perplexity
        from ..runtime.errors import AccelError
        from ..runtime.model import CompactLM, supports

        if suite not in ("needle", "ruler"):
            raise AccelError(f"unknown --suite {suite!r}: use needle or ruler")
        if suite == "ruler":
            return _quality_ruler(model, pack, pattern, lengths, samples, tasks, batch, seed, ppl_length,
                                  device, dtype, json_path, plot, seconds, ppl_text)
        if ppl_text is not None:  # the needle suite scores the search's held-out sample, not these texts
            raise AccelError("--ppl-text applies to --suite ruler only")
        lens = _lengths(lengths or "1k,2k,4k")
        try:
            dps = [float(d) for d in depths.split(",")]
        except ValueError:
            raise AccelError(f"bad --depths {depths!r}: use numbers in [0, 1] like 0,0.5,1") from None
        if any(not 0 <= d <= 1 for d in dps):
            raise AccelError("--depths must lie in [0, 1]")
        hf, tok, name, patterns_for, pk = _model_and_patterns(model, None, pack, pattern, device, dtype, None)
        if not supports(hf):
            raise AccelError(f"bench quality needs a Llama-family model (the compact engine); {name} is not one")
        if max(lens) > hf.config.max_position_embeddings:
            raise AccelError(f"--lengths up to {max(lens)} exceed {name}'s {hf.config.max_position_embeddings}-token context")
        compact = CompactLM.from_hf(hf)
        eos = sorted({hf.config.eos_token_id} if isinstance(hf.config.eos_token_id, int) else set(hf.config.eos_token_id or []))
        with Progress(console=err, transient=True) as prog:
            task = prog.add_task("needle grid", total=len(lens) * len(dps) * trials)
            grid = needle_grid(compact, tok, lens, dps, patterns_for, trials=trials, eos_ids=eos,
                               progress=lambda: prog.advance(task), dense_tail=_tail(pk, pattern))
        from ..search.calibration import held_out_ids

        n_ppl = parse_length((ppl_length or "4k").split(",")[0])
        ids = held_out_ids(tok, n_ppl)[0].reshape(1, -1)[:, :n_ppl].to(compact.device)
        ppl = {"length": n_ppl, "dense": perplexity(compact, ids),
               "sparse": perplexity(compact, ids, patterns_for(n_ppl), dense_tail=_tail(pk, pattern))}
        result = {"bench": "quality", "model": name, "lengths": lens, "depths": dps, "trials": trials,
                  "needle": grid, "perplexity": ppl}
        if medusa_prompts and pk is not None and pk.has_heads:
            from ..bench.decode import heldout_prompts
            from ..runtime.drafters.medusa import MedusaDrafter

            heads, tree = MedusaDrafter.load_heads(pk, compact)
            prompts = heldout_prompts()[:medusa_prompts]  # not among the training prompts of the default pack
            enc = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"] for p in prompts]
            result["medusa"] = medusa_exactness(compact, heads, tree, enc, max_new_tokens, eos_ids=eos)
        t = Table(title=f"needle in a haystack: {name} (share correct)")
        t.add_column("length", justify="right")
        t.add_column("dense", justify="right")
        t.add_column("sparse", justify="right")
        for j, n in enumerate(lens):
            t.add_row(str(n), f"{sum(grid['dense'][i][j] for i in range(len(dps))) / len(dps):.2f}",
                      f"{sum(grid['sparse'][i][j] for i in range(len(dps))) / len(dps):.2f}")
        out.print(t)
        out.print(f"perplexity at {n_ppl} tokens: dense {ppl['dense']:.3f}, sparse {ppl['sparse']:.3f}")
        if "medusa" in result:
            m = result["medusa"]
            out.print(f"greedy Medusa == plain greedy on {m['identical']}/{m['prompts']} prompts; "
                      f"mean accepted {m['mean_accepted']:.2f} tokens/step")
        _save(json_path, result)
        if plot is not None:
            from ..bench.plots import heatmap, histogram

            for mode in ("dense", "sparse"):
                heatmap(plot / f"needle-{mode}.png", grid[mode], xlabels=[str(n) for n in lens],
                        ylabels=[f"{d:.0%}" for d in dps], xlabel="context tokens", ylabel="needle depth",
                        title=f"needle retrieval, {mode} prefill: {name}")
            if "medusa" in result and result["medusa"]["accept_lengths"]:
                histogram(plot / "medusa-accepted.png", result["medusa"]["accept_lengths"],
                          bins=range(1, 7), xlabel="tokens accepted per step", title=f"Medusa: {name}")


def _quality_ruler(model, pack, pattern, lengths, samples, tasks, batch, seed, ppl_length, device, dtype,
                   json_path, plot, seconds=None, ppl_text=None):
    """``bench quality --suite ruler``: the RULER-style tasks and natural-text perplexity, dense vs forced sparse."""
    from rich.progress import Progress

    from ..bench.ruler_run import perplexity_curve, ruler_suite
    from ..bench.ruler import PPL_TEXTS, TASKS
    from ..runtime.errors import AccelError
    from ..runtime.model import CompactLM, supports

    task_list = [t.strip() for t in (tasks or ",".join(TASKS)).split(",") if t.strip()]
    bad = [t for t in task_list if t not in TASKS]
    if bad:
        raise AccelError(f"--tasks: unknown {bad}; choose from {', '.join(TASKS)}")
    texts = list(dict.fromkeys(t.strip() for t in (ppl_text or ",".join(PPL_TEXTS)).split(",") if t.strip()))
    bad = [t for t in texts if t not in PPL_TEXTS]
    if bad or not texts:  # checked before the model loads: a typo costs no minutes
        raise AccelError(f"--ppl-text: unknown {bad or [ppl_text]}; choose from {', '.join(PPL_TEXTS)}")
    hf, tok, name, patterns_for, pk = _model_and_patterns(model, None, pack, pattern, device, dtype, None)
    if not supports(hf):
        raise AccelError(f"bench quality needs a Llama-family model (the compact engine); {name} is not one")
    tail = _tail(pk, pattern)
    ctx = hf.config.max_position_embeddings
    room = max(TASKS[t].max_new_tokens for t in task_list)
    if lengths is None:  # the default lengths that fit, leaving room for the answer
        lens = [n for n in _lengths(_RULER_LENGTHS) if n + room <= ctx] or [ctx - room]
    else:
        lens = _lengths(lengths)
        if max(lens) + room > ctx:
            raise AccelError(f"--lengths up to {max(lens)} plus {room} answer tokens exceed {name}'s {ctx}-token "
                             f"context: use lengths up to {ctx - room}")
    ppl_lens = lens if ppl_length is None else [n for n in _lengths(ppl_length) if n > 0] if ppl_length.strip() != "0" else []
    if ppl_lens and max(ppl_lens) > ctx:
        raise AccelError(f"--ppl-length {max(ppl_lens)} exceeds {name}'s {ctx}-token context")
    compact = CompactLM.from_hf(hf)
    eos = sorted({hf.config.eos_token_id} if isinstance(hf.config.eos_token_id, int) else set(hf.config.eos_token_id or []))
    if getattr(tok, "eos_token_id", None) is not None:
        eos = sorted(set(eos) | {tok.eos_token_id})
    with Progress(console=err, transient=True) as prog:
        bar = prog.add_task("RULER cases", total=len(lens) * len(task_list) * samples)
        done_rows: list = []

        def on_row(row):  # partial results on disk as each row finishes (a killed run keeps them)
            done_rows.append(row)
            if json_path is not None:
                _save(json_path, {"bench": "quality", "suite": "ruler", "model": name, "partial": True,
                                  "rows": done_rows}, quiet=True)

        res = ruler_suite(compact, tok, task_list, lens, patterns_for, samples=samples, batch=batch, seed=seed,
                          eos_ids=eos, progress=lambda k: prog.advance(bar, k), seconds=seconds, on_row=on_row,
                          dense_tail=tail)
    ppl = [r for text in texts for r in (perplexity_curve(compact, tok, ppl_lens, patterns_for, seed=seed,
                                                          dense_tail=tail, text=text) if ppl_lens else [])]
    from ..bench.ruler import shared_ngrams, suite_text_sample
    from ..search.calibration import haystack_paragraphs

    # the suite's text sources share no 8-word run with the search's built-in calibration prose
    disjoint = not shared_ngrams(suite_text_sample(), "\n".join(haystack_paragraphs()))
    result = {"bench": "quality", "suite": "ruler", "model": name, "dtype": str(compact.dtype),
              "lengths": lens, "tasks": task_list, "samples": samples, "seed": seed, "forced_sparse": True,
              "dense_tail": tail,
              "disjoint_from_calibration": disjoint, **res, "perplexity": ppl}
    rows = res["rows"]
    t = Table(title=f"RULER-style suite: {name}, dense vs forced sparse prefill (score 0-100, {samples} cases each)")
    t.add_column("task")
    for n in lens:
        t.add_column(f"{n} dense", justify="right")
        t.add_column(f"{n} sparse", justify="right")
    for task in task_list + ["average"]:
        cells = []
        for n in lens:
            r = next((r for r in (res["averages"] if task == "average" else rows)
                      if r["length"] == n and r.get("task", "average") == task), None)
            cells += [f"{r['dense']:.1f}", f"{r['sparse']:.1f}"]
        t.add_row(task, *cells)
    out.print(t)
    for n in lens:
        at = [r for r in rows if r["length"] == n and r["density"] is not None]
        if at:
            out.print(f"{n} tokens: density {sum(r['density'] for r in at) / len(at):.3f}, "
                      f"heads run sparse {sum(r['sparse_head_share'] for r in at) / len(at):.2f}")
        at = [r for r in rows if r["length"] == n]
        pairs = sum(r["samples"] for r in at)
        if pairs:  # where the time went (host wall-clock phases; see bench.ruler_run)
            phases = {p: sum(r["timing"][p] for r in at) for p in at[0]["timing"]}
            err.print(f"{n} tokens: {pairs} case pairs in {sum(r['wall_s'] for r in at):.1f} s; ms per pair: "
                      + ", ".join(f"{p} {1000 * v / pairs:.1f}" for p, v in phases.items()))
    for r in ppl:
        out.print(f"perplexity ({r['text']}) at {r['length']} tokens: dense {r['dense']:.3f}, sparse {r['sparse']:.3f} "
                  f"({100 * (r['ratio'] - 1):+.2f} %)")
    _save(json_path, result)
    if plot is not None:
        from ..bench.plots import heatmap, line_plot

        for mode in ("dense", "sparse"):
            grid = [[next(r[mode] for r in rows if r["task"] == task and r["length"] == n) / 100 for n in lens]
                    for task in task_list]
            heatmap(plot / f"ruler-{mode}.png", grid, xlabels=[str(n) for n in lens], ylabels=task_list,
                    xlabel="prompt tokens", ylabel="task", title=f"RULER score / 100, {mode} prefill: {name}")
        line_plot(plot / "ruler-average.png", lens, {m: [a[m] for a in res["averages"]] for m in ("dense", "sparse")},
                  xlabel="prompt tokens", ylabel="mean RULER score (0-100)", title=f"RULER-style suite: {name}")


@app.command("decode")
def decode(
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    synthetic: Optional[str] = typer.Option(None, "--synthetic", help=_SYNTH_HELP),
    pack: Optional[Path] = typer.Option(None, "--pack", help="Heads from this pack (default model: the shipped pack)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    prompts: int = typer.Option(8, "--prompts", min=1, help="Held-out built-in chat prompts to average over."),
    hf_baseline: bool = typer.Option(True, "--hf/--no-hf", help="Also time transformers' eager generate."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    modes: Optional[str] = typer.Option(None, "--modes", help="Decode-step modes to time, comma-separated (default on CUDA: exact,graph)."),
    json_path: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot"),
    into_pack: Optional[Path] = typer.Option(None, "--into-pack", help="Store the measured batched-vs-speculative throughput table in this pack's provenance (decode_throughput), where `accel generate` reads it to pick batched plain or speculative decoding for a prompt file. Must be the pack of the measured model."),
):
    """Tokens/s, wall clock (request start to last token) beside decode-only: transformers generate vs our plain decode (batch 1 and batched) vs Medusa; speed-ups from wall clock; accepted length; bandwidth use."""
    with user_errors():
        _check_json(json_path, pack)
        if into_pack is not None:  # a bad pack fails now, not after minutes of timing
            from ..runtime.pack import load_pack

            load_pack(into_pack)
        from ..bench.decode import run_decode_bench

        from ..runtime.errors import AccelError
        from ..runtime.steps import MODES

        mode_list = [m.strip() for m in modes.split(",") if m.strip()] if modes else None
        removed = [m for m in mode_list or [] if m in ("inductor", "compile")]
        if removed:
            raise AccelError(f"--modes: {removed[0]} was removed (never the fastest); use exact (or graph)")
        bad = [m for m in mode_list or [] if m not in MODES]
        if bad:
            raise AccelError(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
        rows, extra = run_decode_bench(model=model, synthetic=synthetic, pack=pack, max_new_tokens=max_new_tokens,
                                       num_prompts=prompts, hf_baseline=hf_baseline, device=device, dtype=dtype,
                                       modes=mode_list, log=err.print)
        out.print(_table(f"decode: {extra['model']} ({extra['dtype']}, {extra['device']})", rows,
                         ["engine", "wall_tokens_per_s", "tokens_per_s", "speedup_vs_plain", "decode_speedup_vs_plain",
                          "overhead_ms_per_request", "mean_accepted", "identical_to_plain",
                          "batched_identical_to_single", "bandwidth_util", "speedup_vs_hf"]))
        table = extra["decode_throughput"]
        err.print("batched plain, wall tok/s by batch size: " + ", ".join(
            f"{b}: {t:.0f}" for b, t in table["plain_tok_s"].items()) + f"; speculative: {table['speculative_tok_s']:.0f}")
        _save(json_path, {"bench": "decode", **extra, "rows": rows})
        if into_pack is not None:
            _store_throughput(into_pack, table, extra)
        if plot is not None and extra.get("accept_lengths"):
            from ..bench.plots import histogram

            histogram(plot / "decode-accepted.png", extra["accept_lengths"], bins=range(1, 8),
                      xlabel="tokens accepted per step", title=f"Medusa: {extra['model']}")


def _store_throughput(path: Path, table: dict, extra: dict) -> None:
    """Write the measured decode table into the pack's provenance (atomically), after checking the
    pack was built for the measured model."""
    from ..bench.common import environment
    from ..runtime.errors import AccelError
    from ..runtime.pack import load_pack, save_pack

    pk = load_pack(path)
    if extra.get("heads") != "pack":
        raise AccelError("--into-pack: Medusa ran with random heads here (no pack drafter), so its tokens/s says "
                         "nothing about the pack's drafter; measure with --pack PACK")
    if pk.base_model and extra.get("model") and pk.base_model != extra["model"]:
        raise AccelError(f"--into-pack: {path} is for {pk.base_model}, the measurement is of {extra['model']}")
    pk.provenance["decode_throughput"] = {**table, "command": environment(command_line())["command"],
                                          "date": environment()["date"]}
    save_pack(pk, path)
    err.print(f"stored the decode throughput table in {path}")


@app.command("kernels")
def kernels(
    lengths: str = typer.Option("32k,128k", "--lengths"),
    patterns: str = typer.Option("vertical_and_slash,block_sparse,stream_llm", "--patterns"),
    reps: int = typer.Option(5, "--rep", min=1),
    flex: bool = typer.Option(True, "--flex/--no-flex", help="Also time PyTorch FlexAttention: on our kept blocks, and on exactly our kept keys (fair column)."),
    json_path: Optional[Path] = typer.Option(None, "--json"),
    plot: Optional[Path] = typer.Option(None, "--plot"),
):
    """Sparse kernels vs cuDNN SDPA vs FlexAttention, one layer of Llama-3-8B attention (32/8 heads, d=128, bf16)."""
    with user_errors():
        _check_json(json_path)
        from ..bench.kernels import run_kernel_bench

        names = [p.strip() for p in patterns.split(",") if p.strip()]
        meta, results, _ = run_kernel_bench(_lengths(lengths), names, reps=reps, use_flex=flex, profile_index=True,
                                            log=lambda *a, **k: err.print(*a), command=command_line())
        rows = [dict(length=r["n"], pattern=r["pattern"][0], cudnn_ms=r["dense_cudnn_ms"], accel_ms=r["best"]["total_ms"],
                     kernel_ms=r["best"]["kernel_ms"], index_ms=r["best"]["index_ms"], density=r["best"]["density"],
                     speedup_vs_cudnn=r["speedup_vs_cudnn"], eff_vs_cudnn=r["kernel_eff_vs_cudnn"],
                     flex_ms=r.get("flex_ms"), speedup_vs_flex=r.get("speedup_vs_flex"),
                     flex_exact_ms=r.get("flex_exact_ms"), speedup_vs_flex_exact=r.get("speedup_vs_flex_exact"),
                     padding_share=r.get("padding_share"), index_share=r.get("index_share")) for r in results]
        out.print(_table(f"attention kernels ({meta['device']})", rows, list(rows[0]) if rows else ["length"]))
        _save(json_path, {"bench": "kernels", "meta": meta, "rows": rows, "raw": results})
        if plot is not None and rows:
            from ..bench.plots import line_plot

            x = sorted({r["length"] for r in rows})
            series = {p: [next((r["speedup_vs_cudnn"] for r in rows if r["pattern"] == p and r["length"] == n), float("nan"))
                          for n in x] for p in names}
            line_plot(plot / "kernels-speedup.png", x, series, xlabel="tokens", ylabel="speed-up vs cuDNN SDPA",
                      title="sparse attention kernels")
