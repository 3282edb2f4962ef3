"""Write docs/results.md (and its plots) from the committed JSON under results/.

Every table on the page is read from a results file, and names that file, its device, date and command.

  .venv/bin/python scripts/results_page.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
R = ROOT / "results"
IMG = ROOT / "docs" / "img"


def load(name):
    p = R / name
    return json.loads(p.read_text()) if p.exists() else None


def env_line(name, env):
    env = env or {}
    return (f"*Source: [`results/{name}`](../results/{name}) — {env.get('device', '?')}, {str(env.get('date', '?'))[:10]}, "
            f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}; command: `{env.get('command', '?')}`*")


def table(rows, cols, fmt=None):
    fmt = fmt or {}
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for _, key in cols:
            v = key(r) if callable(key) else r.get(key)
            if isinstance(v, float):
                v = f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
            cells.append("—" if v is None else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def kernels_section():
    d = load("kernels-h200.json")
    if not d:
        return ""
    rows = [dict(N=r["n"], pattern=r["pattern"][0], cudnn=r["dense_cudnn_ms"], ours=r["best"]["total_ms"],
                 kernel=r["best"]["kernel_ms"], index=r["best"]["index_ms"], density=r["best"]["density"],
                 x=r["speedup_vs_cudnn"], eff=r["kernel_eff_vs_cudnn"], flex=r.get("flex_ms"),
                 idx_share=r["best"]["index_ms"] / r["best"]["total_ms"]) for r in d["results"]]
    try:
        from accel.bench.plots import line_plot

        ns = sorted({r["N"] for r in rows})
        pats = sorted({r["pattern"] for r in rows})
        line_plot(IMG / "kernels-speedup.png", ns, {p: [next(r["x"] for r in rows if r["N"] == n and r["pattern"] == p) for n in ns] for p in pats},
                  xlabel="tokens", ylabel="speed-up vs cuDNN SDPA", title="sparse attention, one layer (H200)")
    except Exception:
        pass
    m = d["meta"]
    return f"""## Sparse attention kernels (one layer, Llama-3-8B attention shape)

32 query heads, 8 KV heads, d=128, bf16, causal, B=1. "ours" = online index estimation + one Triton
launch; "kernel" = the launch alone; "eff" = our kernel's TFLOP/s over the work it computes ÷ cuDNN's
dense TFLOP/s; FlexAttention (compiled) gets the same kept blocks (without vertical-slash's single
columns, which it cannot gather). Inputs are random with a planted vertical-slash structure in the
estimation window (see `kernels/bench.py`); speed depends only on the index, whose density is given.
Times in ms, medians of CUDA-event timings after warm-up.

{table(rows, [("N", "N"), ("pattern", "pattern"), ("cuDNN", "cudnn"), ("ours", "ours"), ("kernel", "kernel"), ("index", "index"),
              ("index share", "idx_share"), ("density", "density"), ("× cuDNN", "x"), ("eff", "eff"), ("Flex", "flex")])}

{env_line("kernels-h200.json", {**m, "torch": m.get("torch"), "triton": m.get("triton")})}

![kernel speed-up](img/kernels-speedup.png)
"""


def prefill_section():
    parts = ["## Prefill: time to first token, dense vs sparse (end to end)\n",
             "The compact engine's whole prefill (all layers, MLPs included) of one prompt; dense = cuDNN SDPA "
             "causal attention. `predicted work` is the kernel-aware cost model's share of dense attention "
             "work; `index density` is what the online estimation actually kept on this model's data.\n"]
    for name, title in (("prefill-llama3-8b-stream_llm-h200.json", "Llama-3-8B-shaped (random weights), every head A-shape 1024 sink + 4096 window"),
                        ("prefill-llama3-8b-block_sparse-h200.json", "Llama-3-8B-shaped (random weights), every head block-sparse top-64 blocks"),
                        ("prefill-llama3-8b-vertical_and_slash-h200.json", "Llama-3-8B-shaped (random weights), every head vertical-slash v=1000, s=6096"),
                        ("prefill-smollm2-h200.json", "SmolLM2-135M-Instruct (real weights), the default pack's searched patterns")):
        d = load(name)
        if not d:
            continue
        parts.append(f"### {title}\n")
        parts.append(table(d["rows"], [("tokens", "length"), ("dense ms", "dense_ms"), ("sparse ms", "sparse_ms"),
                                       ("speed-up", "speedup"), ("predicted work", lambda r: r.get("predicted_work", r.get("attention_work"))),
                                       ("index density", "index_density_random_qk"), ("index ms (all layers)", "index_ms")]))
        parts.append("\n" + env_line(name, d.get("env")) + "\n")
    try:  # latency and speed-up vs length, from the same files
        from accel.bench.plots import line_plot

        series_ms, series_x, x = {}, {}, None
        for pat in ("stream_llm", "block_sparse", "vertical_and_slash"):
            d = load(f"prefill-llama3-8b-{pat}-h200.json")
            if d:
                x = [r["length"] for r in d["rows"]]
                series_ms.setdefault("dense (cuDNN)", [r["dense_ms"] for r in d["rows"]])
                series_ms[pat] = [r["sparse_ms"] for r in d["rows"]]
                series_x[pat] = [r["speedup"] for r in d["rows"]]
        if x:
            line_plot(IMG / "prefill-latency.png", x, series_ms, xlabel="prompt tokens", ylabel="time to first token (ms)",
                      title="prefill, Llama-3-8B-shaped, H200", logy=True)
            line_plot(IMG / "prefill-speedup.png", x, series_x, xlabel="prompt tokens", ylabel="speed-up vs dense",
                      title="prefill speed-up, Llama-3-8B-shaped, H200")
            parts.append("![prefill latency](img/prefill-latency.png) ![prefill speed-up](img/prefill-speedup.png)\n")
    except Exception:
        pass
    parts.append("""Reading these: with random weights, attention is diffuse, so vertical-slash estimation spreads its
6096 diagonals over the whole sequence and keeps ~99 % of the work; the runtime then falls back to
dense (an index above 60 % density runs cuDNN), which is why that row is ~1.0× (before the fallback
it was 0.8×: `results/prefill-llama3-8b-vertical_and_slash-nofallback-h200.json`). A-shape and
block-sparse cost what their sizes say on any data: 1.2× at 32K and 2.6× at 128K end to end, where
the MLPs and projections (~3 s of the 4.5 s at 128K) are untouched. On the 135M default model sparse
prefill is 11-30× *slower* up to its 8K context: the per-layer index building (~3-5 ms, host syncs
and small launches) dwarfs 0.5 ms of dense attention, so the runtime uses dense attention below
32K tokens (`runtime/engine.py`).
""")
    return "\n".join(parts)


def decode_tables(files, cols) -> list[str]:
    """One table per decode results file: (file, title) pairs, with its bandwidth and source lines."""
    parts = []
    for name, title in files:
        d = load(name)
        if not d:
            continue
        parts.append(f"### {title}\n")
        parts.append(table(d["rows"], cols))
        bw = d.get("copy_bandwidth_gbs")
        parts.append(f"\nCopy bandwidth measured: {bw:.0f} GB/s; weight bytes/token: {d.get('weight_bytes', 0) / 1e9:.2f} GB.\n" if bw else "")
        parts.append(env_line(name, d.get("env")) + "\n")
    return parts


def exact_section():
    parts = ["## Decode with the batch-invariant kernels (`--compile exact`, the CUDA default)\n",
             "Every step (1-token decode, 64-node Medusa verify, a left-padded batch, a prompt up to 8192 "
             "tokens) runs through the same Triton kernels, whose per-row arithmetic does not depend on the "
             "number of rows or on where a key sits in the cache ([kernels/tree_attention.py](../kernels/tree_attention.py), "
             "[kernels/invariant_linear.py](../kernels/invariant_linear.py)). So greedy Medusa gives plain "
             "greedy's tokens in bf16, and a batch gives each prompt's single-prompt tokens. All modes were "
             "timed in the same run; \"identical to plain\" compares Medusa with plain decoding of the same "
             "mode, \"batched == single\" one left-padded batch of all prompts with the prompts run one by one.\n"]
    parts += decode_tables(
        (("decode-smollm2-exact.json", "SmolLM2-135M-Instruct (real weights), the shipped pack's heads, 24 held-out chat prompts × 256 tokens"),
         ("decode-llama3-8b-exact.json", "Llama-3-8B-shaped (random weights; random heads accept ~1 token/step, so Medusa here is the verify step's cost only)")),
        [("engine", "engine"), ("tokens/s", "tokens_per_s"), ("step ms", "step_ms"), ("× transformers", "speedup_vs_hf"),
         ("× best plain", "speedup_vs_plain"), ("accepted/step", "mean_accepted"), ("Medusa identical to plain", "identical_to_plain"),
         ("batched == single", "batched_identical_to_single"), ("bandwidth util.", "bandwidth_util")])
    small, big = load("decode-smollm2-exact.json"), load("decode-llama3-8b-exact.json")
    if small and big:
        acc = next(r["mean_accepted"] for r in small["rows"] if r["engine"] == "medusa (exact)")
        med = next(r for r in big["rows"] if r["engine"] == "medusa (exact)")
        plain = next(r for r in big["rows"] if r["engine"] == "plain (exact)")
        step = 1e3 / med["tokens_per_s"]  # 1 token per verify step with random heads
        parts.append(f"**Medusa on the 8B shape with the real model's acceptance.** The 8B verify step takes {step:.2f} ms "
                     f"({step / plain['step_ms']:.2f}× a plain step); at SmolLM2's measured {acc:.2f} accepted tokens/step "
                     f"that is {acc / step * 1e3:.0f} tok/s, {acc / step * 1e3 / plain['tokens_per_s']:.2f}× plain. Big weights "
                     "use 32- or 64-row tiles (chosen by the weight's shape, never by the row count; `_row_tile`), "
                     "which took the verify step from 9.1 to 6.8 ms for 2 % of plain speed; the table below shows "
                     "why (columns bm32 / bm64).\n")
    d = load("tree-sweep-h200.json")
    if d:
        parts.append(f"### Tree size (SmolLM2, the shipped heads, exact path; plain: {d['plain_exact_tokens_per_s']:.0f} tok/s)\n")
        parts.append(table(d["rows"], [("tree nodes", "nodes"), ("depth", "depth"), ("accepted/step", "mean_accepted"),
                                       ("verify step ms", "step_ms"), ("tokens/s", "tokens_per_s"), ("× plain", "speedup_vs_plain"),
                                       ("identical to plain", "identical_to_plain")]))
        r0, r1 = d["rows"][0], d["rows"][-1]
        best = max(d["rows"], key=lambda r: r["tokens_per_s"])
        parts.append(f"\nThe heads, not the tree, bound the speed-up: {r1['nodes'] / r0['nodes']:.0f}x more nodes "
                     f"({r0['nodes']} -> {r1['nodes']}) add {r1['mean_accepted'] - r0['mean_accepted']:.2f} accepted tokens "
                     f"per step, while the verify step grows from {r0['step_ms']:.2f} to {r1['step_ms']:.2f} ms. The fastest "
                     f"is {best['nodes']} nodes; the pack ships 63.\n")
        parts.append(env_line("tree-sweep-h200.json", d.get("env")) + "\n")
    d = load("invariant-linear-h200.json")
    if d:
        parts.append("### The invariant linear kernel vs cuBLAS (M = rows: 1 = decode step, 64 = verify step)\n")
        parts.append(table(d["results"], [("model", "model"), ("weight", "weight"), ("M", "M"), ("cuBLAS µs", "cublas_us"),
                                          ("16-row tiles µs", "ours_us"), ("GB/s", "ours_gbs"), ("split-K 1/2/4/8 µs", lambda r: " / ".join(
                                              f"{r[f'split{k}_us']:.1f}" for k in (1, 2, 4, 8))),
                                          ("bm32 µs", "bm32_us"), ("bm64 µs", "bm64_us")]))
        parts.append("\nThe split-K rule in `_tiles` and the row-tile rule in `_row_tile` (both by weight shape and "
                     "SM count, never by M) were set from these columns: split-K lets a 1-row step stream a 4096-wide "
                     "weight at or above cuBLAS speed; 32/64-row tiles halve the 64-row time of the big weights.\n")
        parts.append(env_line("invariant-linear-h200.json", d.get("env")) + "\n")
    d = load("prefill-smollm2-exact.json")
    if d:
        parts.append("### Prefill through the invariant kernels, real SmolLM2\n")
        parts.append(table(d["rows"], [("prompt tokens", "length"), ("cuDNN ms", "dense_ms"), ("invariant ms", "exact_ms"),
                                       ("sparse ms", "sparse_ms")]))
        parts.append("\nThe invariant prefill re-reads K/V per small query tile, so single prompts over 8192 tokens "
                     "prefill through cuDNN (or the sparse kernels) even in exact mode; Medusa and plain share that "
                     "prefill, so they still agree.\n")
        parts.append(env_line("prefill-smollm2-exact.json", d.get("env")) + "\n")
    return "\n".join(parts)


def decode_section():
    parts = ["## Decode before the invariant kernels (first session's run), batch 1, greedy\n",
             "transformers `generate` (eager) vs our plain decode (static cache; step captured as a CUDA graph, "
             "or `torch.compile`d layers then captured — \"inductor\") vs Medusa tree decoding. Bandwidth "
             "utilisation = weight bytes per token × tokens/s ÷ the copy bandwidth measured in the same run.\n"]
    parts += decode_tables(
        (("decode-smollm2-h200.json", "SmolLM2-135M-Instruct (real weights) with the default pack's heads, 8 held-out chat prompts × 256 tokens"),
         ("decode-llama3-8b-h200.json", "Llama-3-8B-shaped (random weights; Medusa heads random, so ~1 token/step: speed of the machinery only)")),
        [("engine", "engine"), ("tokens/s", "tokens_per_s"), ("× transformers", "speedup_vs_hf"), ("× our plain", "speedup_vs_plain"),
         ("accepted/step", "mean_accepted"), ("identical to plain", "identical_to_plain"), ("bandwidth util.", "bandwidth_util")])
    return "\n".join(parts)


def acceptance_section():
    r1 = load("acceptance-h200-run1.json")
    parts = ["## Medusa heads on the default model\n"]
    if r1:
        parts.append("### Shared vs own vocab projection (run 1: greedy self-distillation only, 1500 steps)\n")
        parts.append(table(r1["rows"], [("projection", "projection"), ("pack MB", lambda r: r["bytes"] / 1e6),
                                        ("accepted/step", "mean_accepted"), ("accepted per MB", "accepted_per_mb"),
                                        ("held-out top-1 (heads 1-4)", lambda r: " / ".join(f"{x:.2f}" for x in r["top1"] or []))]))
        parts.append("\nOwn projections accept 6 % more tokens per step but make the pack 86× larger "
                     "(458 MB vs 5.3 MB; over the 10 MB budget), so the default is the shared projection.\n")
        parts.append(env_line("acceptance-h200-run1.json", r1.get("env")) + "\n")
    rows = []
    for name, label in (("acceptance-bf16-h200-run2.json", "bf16"), ("acceptance-bf16-fp32logits-h200-run2.json", "bf16, fp32 logits"),
                        ("acceptance-fp32-h200-run2.json", "fp32")):
        d = load(name)
        if d:
            for r in d["rows"]:
                rows.append(dict(numerics=label, file=name, **r))
    if rows:
        parts.append("### The first session's pack (run 2: greedy + 3 sampled answers per prompt, 2500 steps; since re-trained with 7), 24 held-out prompts × 256 tokens\n")
        parts.append(table(rows, [("numerics", "numerics"), ("accepted/step", "mean_accepted"),
                                  ("identical to plain greedy", lambda r: f"{r['identical_to_plain']}/{r['prompts']}")]))
        parts.append("\nThe plain reference here is `accel generate`'s batched plain decoding of all 24 prompts "
                     "(left-padded); its per-row tokens/s in the JSON are not batch-1 speeds and are not compared "
                     "here — batch-1 speeds are in the decode section, where bf16 Medusa matched batch-1 plain "
                     "greedy on 2/8 prompts.\n")
        parts.append("""
*These runs predate the batch-invariant kernels (the exact section above: 24/24 in bf16 now).*
Greedy Medusa was token-for-token plain greedy in fp32 (24/24, and in every CPU test). In bf16 on the
GPU only 5/24 prompts stayed identical over 256 tokens: the 64-node verify step and the plain decode
step use different GEMM/attention kernels, whose bf16 roundings differ enough to flip near-tied
argmaxes (fp32 logits alone do not help: the difference is in the hidden states; padding both steps
to one GEMM shape did not help either — [results/experiments/](../results/experiments/README.md) —
the remaining difference was the attention over tree keys at scattered cache slots, which the
logical-order kernel of `--compile exact` removes).
""")
        parts.append(env_line("acceptance-fp32-h200-run2.json", load("acceptance-fp32-h200-run2.json").get("env")) + "\n")
    return "\n".join(parts)


def multigpu_section():
    d = load("train-heads-multigpu-h200x2.json")
    if not d:
        return ""
    rows = [dict(gpus=r["world_size"], tps=r["tokens_per_s"], wall=r["train_wall_s"],
                 top1=" / ".join(f"{x:.2f}" for x in r["top1"])) for r in d["rows"]]
    return f"""### Data-parallel training through `accelerate launch` (2 × H200)

The same `accel train-heads` command (200 steps × 16 sequences × 512 tokens per GPU, plain-text data),
once under `accelerate launch --multi_gpu --num_processes 2` and once on one GPU of the same machine:

{table(rows, [("GPUs", "gpus"), ("tokens/s", "tps"), ("training s", "wall"), ("held-out top-1 (heads 1-4)", "top1")])}

{env_line("train-heads-multigpu-h200x2.json", d.get("env"))} (now `scripts/gpu/train_multigpu.sh`).
"""


def cpu_tree_section():
    d = load("cpu-tree-sizes.json")
    if not d:
        return ""
    return f"""### Medusa on a CPU

The shipped pack on the 2-core CPU (fp32, {d['prompts']} held-out prompts × {d['new_tokens']} tokens), plain decoding
vs Medusa with trees of several sizes built from the same measured acceptance:

{table(d["rows"], [("engine", "engine"), ("tokens/s", "tokens_per_s"), ("× plain", "speedup"), ("accepted/step", "mean_accepted"), ("identical", "identical")])}

Every tree size loses on the CPU, where the verify step is compute-bound and the per-step machinery is
not amortised; so `accel generate` turns Medusa on by default only with CUDA (`--medusa` forces it).

{env_line("cpu-tree-sizes.json", d.get("env"))}
"""


def search_section():
    s = load("search-smollm2.json")
    t = load("search-time-8b-4layers-h200.json")
    parts = ["## Pattern search\n"]
    if s:
        rows = []
        for key, run in s["runs"].items():
            v = run.get("validation", {})
            rows.append(dict(run=key, seconds=run.get("seconds"), counts=json.dumps(run["summary"]["counts"]),
                             recall=run["summary"]["mean_recall"], min_recall=run["summary"]["min_recall"],
                             density=run["summary"]["mean_density"], top1=v.get("top1_agreement"), kl=v.get("kl")))
        parts.append("Default model at 4096 tokens on the 2-core CPU (validation: dense vs sparse next-token top-1 "
                     "agreement and KL on held-out text):\n")
        parts.append(table(rows, [("run", "run"), ("search s", "seconds"), ("patterns", "counts"), ("mean recall", "recall"),
                                  ("min recall", "min_recall"), ("density", "density"), ("top-1 agreement", "top1"), ("KL", "kl")]))
        parts.append(f"\n*Source: [`results/search-smollm2.json`](../results/search-smollm2.json) — {s.get('torch')}, CPU. "
                     "The shipped pack uses the `--target-recall 0.95` patterns.*\n\n![patterns](img/smollm2-patterns-r95.png)\n")
    full = load("search-time-8b-h200.json")
    if full:
        t = full
        parts.append(f"""Llama-3-8B-shaped model (random weights) at {t['seq_len']} tokens on one {t['device']}, all {t['layers']} layers:
search {t['search_s']:.1f} s ({t['candidates_per_layer']} candidates per layer, every head scored with the
runtime's own online estimation) + {t['validate_s']:.1f} s validation + {t['build_model_s']:.1f} s to build the model;
{t['wall_s']:.0f} s in all, peak memory {t['peak_memory_gib']} GiB — against the 15-minute target (MInference: ~15 min
on an A100). The patterns of a random-weight model are meaningless; only the time is.

*Source: [`results/search-time-8b-h200.json`](../results/search-time-8b-h200.json); command: `{t['command']}`*
""")
    return "\n".join(parts)


def training_section():
    from safetensors import safe_open

    p = ROOT / "runtime" / "default_pack.safetensors"
    if not p.exists():
        return ""
    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    prov = json.loads(meta["accel.provenance"])
    m = prov["train_heads"]["metrics"]
    d = prov["train_heads"]["data"]
    return f"""## Training the default pack's heads

{m['steps']} steps × {m['batch_size']} × {m['seq_len']} tokens on one H200 (bf16 autocast, base frozen):
{m['train_wall_s']:.0f} s of training at {m['tokens_per_s']:,.0f} tokens/s, on {d['examples']} self-distilled examples
({d['num_prompts']} built-in prompts: the greedy answer plus {d['sampled_answers']} sampled at T={d['sample_temperature']}).
Held-out per-head top-1 / top-5: {' / '.join(f'{x:.2f}' for x in m['top1'])} and {' / '.join(f'{x:.2f}' for x in m['top5'])}
(Medusa's Vicuna-7B: 0.56 / 0.32 / 0.20 / 0.15 top-1). The pack records the exact commands:

```
{prov['commands']['search_patterns']}
{prov['commands']['train_heads']}
```
"""


def quality_section():
    parts = []
    for name, title in (("quality-smollm2-h200.json", "H200, bf16 (the images below)"), ("quality-smollm2-cpu.json", "2-core CPU, fp32")):
        d = load(name)
        if not d:
            continue
        lens, deps = d["lengths"], d["depths"]
        rows = [dict(length=n, dense=sum(d["needle"]["dense"][i][j] for i in range(len(deps))) / len(deps),
                     sparse=sum(d["needle"]["sparse"][i][j] for i in range(len(deps))) / len(deps)) for j, n in enumerate(lens)]
        out = f"""### {title}

Needle in a haystack (share of needles retrieved; {len(deps)} depths × {d['trials']} trial(s) per length), dense vs
the shipped pack's sparse patterns (forced on at every length for this measurement):

{table(rows, [("context tokens", "length"), ("dense", "dense"), ("sparse", "sparse")])}

Perplexity of the last half of a {d['perplexity']['length']}-token held-out text: dense {d['perplexity']['dense']:.3f}, sparse {d['perplexity']['sparse']:.3f}.
"""
        if "medusa" in d:
            m = d["medusa"]
            out += (f"\nGreedy Medusa == plain greedy on {m['identical']}/{m['prompts']} chat prompts; mean accepted "
                    f"{m['mean_accepted']:.2f} tokens/step. (These runs drew the prompts from the tail of the built-in "
                    "*training* set, so this accepted length is optimistic; the held-out figures are in the decode "
                    "and Medusa sections above. `bench quality` now uses the held-out prompts.)\n")
        out += "\n" + env_line(name, d.get("env")) + "\n"
        parts.append(out)
    if not parts:
        return ""
    return ("## Fidelity on the default model (the shipped pack)\n\n" + "\n".join(parts)
            + "\n![needle dense](img/needle-dense.png) ![needle sparse](img/needle-sparse.png) ![accepted](img/medusa-accepted.png)\n")


# `accel bench prefill --json` runs of real long-context models (schema: bench/prefill.py)
LONG_PREFILL = (("prefill-qwen2.5-coder-0.5b-h200.json", "Qwen2.5-Coder-0.5B-Instruct (real weights, 32K context), its searched pack"),)


def break_even(rows: list[dict]):
    """The shortest measured length from which sparse beats dense there and at every longer measured
    length (the rule scripts/gpu/qwen_longctx.py records in the pack as sparse_min_len); None: never."""
    best = None
    for r in sorted(rows, key=lambda r: r["length"], reverse=True):
        if r["speedup"] <= 1.0:
            break
        best = r["length"]
    return best


def long_prefill_section():
    parts = []
    for name, title in LONG_PREFILL:
        d = load(name)
        if not d or not d.get("rows"):
            continue
        rows = sorted(d["rows"], key=lambda r: r["length"])
        cols = [("prompt tokens", "length"), ("dense ms", "dense_ms"), ("sparse ms", "sparse_ms"),
                ("sparse × dense", lambda r: f"{r['speedup']:.2f}×")]
        if any(r.get("exact_ms") is not None for r in rows):
            cols.insert(2, ("invariant (exact) ms", "exact_ms"))
        if any(r.get("planned_dense_layers") is not None for r in rows):   # sparse_ms is then the runtime's plan
            cols.append(("layers planned dense", "planned_dense_layers"))
        cols += [("predicted work", "predicted_work"), ("index ms (all layers)", "index_ms"), ("index share", "index_share")]
        n = break_even(rows)
        # the break-even rule of `scripts/gpu/qwen_longctx.py threshold`, which writes it into the pack
        verdict = (f"Sparse prefill beats dense from {n} tokens on (at every measured length from there): the "
                   f"break-even recorded in the pack is `sparse_min_len = {n}`, the length from which the runtime "
                   "prefills sparse."
                   if n is not None else
                   f"Sparse prefill beats dense at no measured length up to {rows[-1]['length']} tokens: the pack's "
                   "`sparse_min_len` is set above the context, so the runtime keeps dense prefill for this model.")
        parts.append(f"### {title}\n\n" + table(rows, cols) + f"\n\n{verdict}\n\n" + env_line(name, d.get("env")) + "\n")
    if not parts:
        return ""
    return ("## Long-context prefill on a real model: time to first token, dense vs sparse\n\n"
            "The compact engine's whole prefill of one prompt of real text (all layers, MLPs included), dense = SDPA "
            "(cuDNN) vs the pack's per-head sparse patterns; `predicted work` = the cost model's share of dense "
            "attention work; the index is estimated online per layer (its time is inside sparse ms).\n\n"
            + "\n".join(parts))


def ruler_section():
    """Per model: the RULER-style suite's per-task table from every results/ruler-*.json of that model
    (runs split by length are merged), the sparse work kept, and natural-text perplexity."""
    runs: dict[str, list] = {}
    for f in sorted(R.glob("ruler-*.json")):
        if "-run" in f.name:   # an earlier run kept for the record (the run its successor replaced)
            continue
        d = json.loads(f.read_text())
        runs.setdefault(d["model"], []).append((f.name, d))
    if not runs:
        return ""
    parts = ["## Long-context fidelity: RULER-style suite, dense vs forced sparse prefill\n\n"
             "RULER's synthetic tasks generated offline with seeds (`bench/ruler.py`); score 0-100 (RULER's "
             "string_match_all); sparse prefill forced at every length with no dense fallback; the same cases "
             "dense and sparse in one run.\n"]
    for model, files in runs.items():
        rows = [r for _, d in files for r in d["rows"]]
        avgs = {a["length"]: a for _, d in files for a in d.get("averages", [])}
        for n in {r["length"] for r in rows} - set(avgs):  # a partial file (a run cut short) has rows only
            at = [r for r in rows if r["length"] == n]
            avgs[n] = {"dense": sum(r["dense"] for r in at) / len(at), "sparse": sum(r["sparse"] for r in at) / len(at)}
        lens = sorted({r["length"] for r in rows})
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        cell = {(r["task"], r["length"]): r for r in rows}
        head = "| task | " + " | ".join(f"{n} dense | {n} sparse" for n in lens) + " |"
        lines = [head, "|---|" + "---|---|" * len(lens)]
        for t in tasks:
            lines.append(f"| {t} | " + " | ".join(
                f"{cell[t, n]['dense']:.1f} | {cell[t, n]['sparse']:.1f}" if (t, n) in cell else "— | —" for n in lens) + " |")
        lines.append("| **average** | " + " | ".join(f"**{avgs[n]['dense']:.1f}** | **{avgs[n]['sparse']:.1f}**" for n in lens) + " |")
        work = []
        for n in lens:
            at = [r for r in rows if r["length"] == n and r.get("density") is not None]
            if at:
                work.append(dict(length=n, density=sum(r["density"] for r in at) / len(at),
                                 heads=sum(r["sparse_head_share"] for r in at) / len(at),
                                 same=sum(r["identical_answers"] for r in at) / len(at)))
        # rows before --ppl-text carry no "text": they are the documentation text
        ppl = sorted(({"text": "docs", **p} for _, d in files for p in d.get("perplexity", [])),
                     key=lambda p: (p["text"], p["length"]))
        # a run with a time budget (--seconds) may run fewer cases than asked: each row says how many
        samples = sorted({r.get("samples", d.get("samples")) for _, d in files for r in d["rows"]} - {None})
        cases = (f"{samples[0]}" if len(samples) == 1 else f"{samples[0]}-{samples[-1]}") if samples else "?"
        partial = any(d.get("partial") for _, d in files)
        out = (f"### {model} ({cases} cases per task and length{'; a partial run: the rows that finished' if partial else ''})\n\n"
               + "\n".join(lines) + "\n\n")
        out += table(work, [("prompt tokens", "length"), ("density (kept work)", "density"),
                            ("share of heads run sparse", "heads"), ("identical answers", "same")]) + "\n\n"
        if ppl:
            out += ("Perplexity of natural long text, last half scored (book: one continuous public-domain "
                    "novel; docs: the Python documentation's paragraphs in a seeded order):\n\n")
            out += table(ppl, [("text", "text"), ("tokens", "length"), ("dense", "dense"), ("sparse", "sparse"),
                               ("sparse / dense", lambda p: f"{p['ratio']:.4f}")]) + "\n\n"
        out += "\n\n".join(env_line(name, d.get("env")) for name, d in files) + "\n"
        parts.append(out)
    return "\n".join(parts)


def _layer_bytes(spec: dict, qkv_in: int) -> int:
    """Weight elements of one decoder layer of a synthetic spec (q/k/v read ``qkv_in`` features)."""
    H, I, D = spec["hidden_size"], spec["intermediate_size"], spec["head_dim"]
    q, kv = spec["num_attention_heads"] * D, spec["num_key_value_heads"] * D
    return qkv_in * (q + 2 * kv) + q * H + 3 * H * I


def lm_head_note(d: dict) -> str:
    """What dominates an EAGLE draft step, said only when the JSON's own timings bound it.

    The plain step runs every base layer (and the lm_head) once, so one base layer costs at most
    plain_step / layers; the draft's layer reads 2H-wide q/k/v (EAGLE-3 reads [embedding, hidden]),
    so it costs at most that times its weight ratio to a base layer. What a draft step spends beyond
    that is its lm_head over the full vocabulary and the top-k. Returns "" when that share is under
    half the draft step or the shape is unknown."""
    try:
        from accel.bench.synthetic import SYNTHETIC
    except Exception:
        return ""
    name = str(d.get("model", "")).removeprefix("synthetic:").split(" ")[0]
    spec, rows = SYNTHETIC.get(name), d.get("eagle") or []
    if not spec or not rows or "(" in str(d.get("model")):  # unknown shape, or a layer-count override
        return ""
    L, H, V = spec["num_hidden_layers"], spec["hidden_size"], spec["vocab_size"]
    ratio = _layer_bytes(spec, 2 * H) / _layer_bytes(spec, H)
    layer_max = d["plain_step_ms"] / L * ratio
    e = rows[0]
    rest = e["draft_step_ms"] - layer_max
    if rest < 0.5 * e["draft_step_ms"]:
        return ""
    gb = lambda n: n * 2 / 1e9  # bf16 bytes  # noqa: E731
    return (f"An EAGLE draft step ({e['draft_step_ms']:.2f} ms, {e['draft_step_ms'] / e['verify_ms'] * 100:.0f} % of a "
            f"{e['verify_ms']:.2f} ms verify) runs one decoder layer, which costs at most {layer_max:.2f} ms here (a plain "
            f"step runs {L} base layers in {d['plain_step_ms']:.2f} ms; the draft layer reads {ratio:.2f}x a base layer's "
            f"weights); so at least {rest:.2f} ms ({rest / e['draft_step_ms'] * 100:.0f} %) of each draft step is the "
            f"lm_head over the {V:,}-token vocabulary and its top-k ({gb(V * H):.2f} GB of weights per step against "
            f"{gb(_layer_bytes(spec, 2 * H)):.2f} GB for the layer). So the EAGLE draft at this shape is dominated by its "
            f"lm_head, paid {e['depth']} times a step ({e['draft_ms']:.2f} ms in all), where Medusa's whole proposal adds "
            f"{d['medusa']['step_ms'] - d['medusa']['verify_ms']:.2f} ms: a smaller draft vocabulary (EAGLE-3's "
            "reduced-vocabulary head) is where its step cost would come down.")


def step_cost_section():
    name = "step-cost-llama3-8b-h200.json"
    d = load(name)
    if not d:
        return ""
    accepts = d["accepts"]
    m = d["medusa"]
    rows = [dict(drafter=f"Medusa, {m['heads']} heads, {m['tree_tokens']}-token tree", verify=m["verify_ms"],
                 draft=m["step_ms"] - m["verify_ms"], **m)]
    rows += [dict(drafter=f"EAGLE top-k {e['top_k']}, depth {e['depth']}, {e['nodes']} nodes", verify=e["verify_ms"],
                  draft=e["draft_ms"], **e) for e in d.get("eagle", [])]
    for r in rows:
        for a in accepts:
            r[f"x{a}"] = f"{r['speedup_at'][str(a)]:.2f}x"
    target = d.get("target", 2.5)
    cols = [("drafter", "drafter"), ("verify ms", "verify"), ("draft ms", "draft"), ("step ms", "step_ms"),
            ("step / plain", lambda r: f"{r['step_over_plain']:.2f}")]
    cols += [(f"× plain at {a} tok/step", f"x{a}") for a in accepts]
    cols += [(f"tok/step for {target}×", lambda r: f"{r['accept_for_target']:.2f}")]
    best = min(rows, key=lambda r: r["accept_for_target"])
    small = load("decode-smollm2-exact.json")
    acc = next((r["mean_accepted"] for r in (small or {}).get("rows", []) if r["engine"].startswith("medusa")), None)
    measured = (f"; SmolLM2's shipped Medusa heads accept {acc:.2f} (`results/decode-smollm2-exact.json`), which "
                f"would give {acc / m['step_over_plain']:.2f}× at this shape's Medusa step cost") if acc else ""
    out = f"""## Speculative decoding at the 8B shape: step cost and projected speed-up

One plain decode step vs one speculative step (verify of the tree's tokens + acceptance + the drafter's own
proposal), each captured as the engine runs it, on a {d['model']} model (random weights: timings depend on
shapes only), {d['mode']} mode, batch 1, {d['context']} tokens in the cache. Plain step: {d['plain_step_ms']:.2f} ms.
The speed-up at a given acceptance is `accepted tokens per step / (step / plain)`; the EAGLE draft steps are
timed one by one without EAGLE-2's tree selection between them, so its step is a lower bound
(`bench/step_cost.py`).

{table(rows, cols)}

A {target}× speed-up needs at least {best['accept_for_target']:.2f} accepted tokens per step ({best['drafter']}){measured}.
"""
    note = lm_head_note(d)
    if note:
        out += "\n" + note + "\n"
    return out + "\n" + env_line(name, d.get("env")) + "\n"


# The newest run of scripts/gpu_sparse_speed.py first: the page shows one (the latest present).
SPARSE_SPEED = (("sparse-speed-h200-run3.json", "issue 12: index path profiled step by step, kernel configs swept"),
                ("sparse-speed-h200.json", "after issue 12's first changes (fused estimation, no compile per length, d=64 tiles)"))


def _shape(s) -> str:
    return "{}q/{}kv d={}".format(*s[1:])


def _graph_line(g: dict) -> str:
    if "error" in g or "captured" in g:  # the script's record of a failed capture
        return f"captured {g.get('captured')}: {g.get('error', '')}"
    return "; ".join(f"{k}: captured {v.get('captured')}, replay == eager {v.get('replay_equals_eager')}, "
                     f"replay {v.get('replay_ms', float('nan')):.2f} ms vs eager {v.get('eager_ms', float('nan')):.2f} ms"
                     for k, v in g.items() if isinstance(v, dict))


def _index_profile_table(profile: list) -> str:
    rows = []
    for r in profile:
        if "error" in r:
            rows.append(dict(shape=_shape(r["shape"]), N=r["n"], same=f"failed: {r['error'][:80]}"))
            continue
        ns, os_ = r["new_steps_ms"], r["old_steps_ms"]
        knobs = {k: v for k, v in (r.get("scores_knobs_ms") or {}).items() if isinstance(v, float)}
        kb = min(knobs, key=knobs.get) if knobs else None
        rows.append(dict(shape=_shape(r["shape"]), N=r["n"], ne=ns["total"], ng=r.get("new_graph_ms"), oe=os_["total"],
                         og=r.get("old_graph_ms"),
                         xe=os_["total"] / ns["total"] if ns.get("total") else None,
                         xg=r["old_graph_ms"] / r["new_graph_ms"] if r.get("new_graph_ms") and r.get("old_graph_ms") else None,
                         scores=sum(v for k, v in ns.items() if k.startswith("scores_")),
                         topk=ns.get("topk_unsorted"), conv=sum(v for k, v in ns.items() if k.startswith("convert_")),
                         same=r.get("new_equals_old_index"), knob=f"{kb} {knobs[kb]:.3f}" if kb else None))
    return table(rows, [("shape", "shape"), ("N", "N"), ("new eager", "ne"), ("new graph", "ng"), ("old eager", "oe"),
                        ("old graph", "og"), ("× eager", "xe"), ("× graph", "xg"), ("new: scores", "scores"),
                        ("new: top-k", "topk"), ("new: conversion", "conv"), ("same index", "same"),
                        ("fastest scores knob (ms)", "knob")])


def _sweep_part(d: dict) -> str:
    sweeps = d.get("sweep") or []
    if not sweeps:
        return ""
    if not any("kernel_ms" in r for sw in sweeps for r in sw.get("rows", [])):
        return ("Kernel config sweep: no config ran (the run's time budget was spent before the sweep; "
                "`--budget-s` sets it).\n")
    rows = []
    for sw in sweeps:
        ok = sorted((r for r in sw.get("rows", []) if "kernel_ms" in r), key=lambda r: r["kernel_ms"])
        failed = sum("error" in r for r in sw.get("rows", []))
        if not ok:
            rows.append(dict(shape=_shape(sw["shape"]), N=sw["n"], ran=0, failed=failed,
                             skipped=sw.get("skipped"), cfg="none ran"))
            continue
        b = ok[0]
        cfg = f"{b['block_m']}x{b['block_n']} w{b['num_warps']} s{b['num_stages']}"
        cfg += (f" loop-stages {b['loop_stages']}" if b.get("loop_stages") is not None else "") + (" warp-specialized" if b.get("warp_specialize") else "")
        rows.append(dict(shape=_shape(sw["shape"]), N=sw["n"], cudnn=sw.get("cudnn_ms"), ms=b["kernel_ms"], eff=b.get("eff"),
                         cfg=cfg, ran=len(ok), failed=failed, skipped=sw.get("skipped")))
    out = ("Kernel config sweep (vertical-slash 1000/6096; tiles × warps × stages, then Hopper loop options on the "
           "best; stopped by the run's time budget): the fastest config per shape and length.\n\n"
           + table(rows, [("shape", "shape"), ("N", "N"), ("cuDNN ms", "cudnn"), ("best config", "cfg"), ("kernel ms", "ms"),
                          ("eff", "eff"), ("configs ran", "ran"), ("failed", "failed"), ("skipped (budget)", "skipped")]))
    sug = d.get("suggested_kernel_configs") or {}
    if sug:
        out += ("\n\n`KERNEL_CONFIGS` rows the sweep suggests (best mean eff over the swept lengths), "
                "(head_dim, BLOCK_M, BLOCK_N): (num_warps, num_stages): "
                + "; ".join(f"({k}): ({v[0]}, {v[1]}) eff {v[2]:.3f}" for k, v in sorted(sug.items())) + ".")
    return out + "\n"


def sparse_speed_section():
    name, title = next(((n, t) for n, t in SPARSE_SPEED if (R / n).exists()), (None, None))
    d = load(name) if name else None
    if not d:
        return ""
    parts = [f"## Sparse prefill speed, one layer: {title}\n",
             "Vertical-slash v=1000 / s=6096 (scaled by the kernel bench for 14/2 heads), bf16, B=1, one run. "
             "\"ours\" = index (fused estimation + sync-free conversion) + kernel; \"index share\" = index ÷ ours; "
             "\"eff\" = kernel TFLOP/s over computed tiles ÷ cuDNN's; \"pad\" = computed ÷ kept-pair FLOPs; "
             "\"Flex blocks\" = FlexAttention on our blocks only (less work than ours); \"Flex exact\" = FlexAttention "
             "with a BlockMask over our tiles and a `mask_mod` keeping exactly our keys. Times in ms.\n"]
    by_shape: dict[str, list] = {}
    for r in d.get("kernels", []):
        b = r["best"]
        by_shape.setdefault(_shape(r["shape"]), []).append(dict(
            N=r["n"], cudnn=r["dense_cudnn_ms"], ours=b["total_ms"], kernel=b["kernel_ms"], index=b["index_ms"],
            idx=r.get("index_share", b["index_ms"] / b["total_ms"]), density=b["density"], pad=r.get("padding_share"),
            x=r["speedup_vs_cudnn"], eff=r["kernel_eff_vs_cudnn"], flex=r.get("flex_ms"), flexx=r.get("flex_exact_ms"),
            xflexx=r.get("speedup_vs_flex_exact"), cfg="{block_m}x{block_n} w{num_warps} s{num_stages}".format(**b)))
    for shape, rows in by_shape.items():
        parts.append(f"### {shape}\n")
        parts.append(table(rows, [("N", "N"), ("cuDNN", "cudnn"), ("ours", "ours"), ("kernel", "kernel"), ("index", "index"),
                                  ("index share", "idx"), ("density", "density"), ("pad", "pad"), ("× cuDNN", "x"), ("eff", "eff"),
                                  ("Flex blocks", "flex"), ("Flex exact", "flexx"), ("× Flex exact", "xflexx"), ("config", "cfg")]) + "\n")
    prev = next((load(n) for n, _ in SPARSE_SPEED if n != name and (R / n).exists()), None)
    if prev and prev is not d:
        pairs = []
        for r in d.get("kernels", []):
            o = next((x for x in prev.get("kernels", []) if x["shape"] == r["shape"] and x["n"] == r["n"]), None)
            if o:
                pairs.append(f"{_shape(r['shape'])} N={r['n']}: index {o['best']['index_ms']:.2f} → {r['best']['index_ms']:.2f} ms, "
                             f"ours {o['best']['total_ms']:.2f} → {r['best']['total_ms']:.2f} ms")
        if pairs:
            prev_name = next(n for n, _ in SPARSE_SPEED if n != name and (R / n).exists())
            parts.append(f"Against the previous run ([`results/{prev_name}`](../results/{prev_name})): " + "; ".join(pairs) + ".\n")
    if d.get("index_profile"):
        parts.append("### Index estimation: new path vs the pre-issue-12 one\n\n"
                     "Milliseconds to build one layer's vertical-slash index (8B shape at 32K/128K, 14/2 d=64 at 16K/31K): "
                     "eager = the sum of its steps timed with CUDA events, graph = one CUDA-graph replay of the whole path "
                     "(launch gaps gone); × = old ÷ new; the new path's eager time split into scores (stats, sums, "
                     "diagonal combine), top-k and the conversion to block lists; same index = new == old.\n")
        parts.append(_index_profile_table(d["index_profile"]) + "\n")
    sweep = _sweep_part(d)
    if sweep:
        parts.append(sweep)
    new = [dict(shape=_shape(x["shape"]), layer=x["patterns"] + (f" (dense heads: {x['dense_backend']} first)" if x.get("dense_backend") else ""),
                N=x["n"], added=x["added_ms"], binaries=sum(x["new_binaries"].values()))
           for x in d.get("new_lengths", []) if not x.get("warmup")]
    if new:
        parts.append("A new prompt length in a running process (after one warm-up length): milliseconds added before "
                     "the first token by the sparse path, and new Triton binaries compiled. A mixed layer's dense heads "
                     "run FlashAttention first by default; \"cudnn first\" rows (the old behaviour) show the per-length "
                     "plan cuDNN builds.\n")
        parts.append(table(new, [("shape", "shape"), ("layer", "layer"), ("N", "N"), ("added ms", "added"),
                                 ("new binaries", "binaries")]) + "\n")
    if d.get("graph"):
        parts.append(f"CUDA-graph capture of the index path + kernel: {_graph_line(d['graph'])}.\n")
    # the script writes device/torch/triton at the top level; an `env` block (added at commit) wins
    env = {"command": "python scripts/gpu_sparse_speed.py", **{k: d[k] for k in ("device", "torch", "triton") if k in d},
           **(d.get("env") or {})}
    parts.append(env_line(name, env) + "\n")
    return "\n".join(parts)


def wall_clock_section():
    d = load("decode-smollm2-wall.json")
    b = load(EAGLE_BENCH)
    e = None if b else load("eagle-accept-smollm2-h200.json")  # the bench's rows supersede the eager acceptance run
    if not d and not e and not b:
        return ""
    parts = ["## Decode as a user feels it: wall clock per request, "
             + ("plain vs Medusa vs EAGLE\n" if b else "and the EAGLE draft's acceptance\n")]
    if d:
        parts.append("Request start to last token (prefill, set-up and graph capture included) beside decode-only tokens/s; "
                     f"{d['prompts']} held-out prompts x {d['max_new_tokens']} tokens, batch 1, after the engine redesign "
                     "(the Medusa step is captured once per model and tree, not per request).\n")
        # older runs: speedup_vs_plain was the decode-only ratio; newer ones name it decode_speedup_vs_plain
        rows = [dict(r, decode_x=r.get("decode_speedup_vs_plain", r.get("speedup_vs_plain"))) for r in d["rows"]]
        parts.append(table(rows, [("engine", "engine"), ("wall tok/s", "wall_tokens_per_s"), ("decode-only tok/s", "tokens_per_s"),
                                        ("wall × plain", "wall_speedup_vs_plain"), ("decode × plain", "decode_x"),
                                        ("overhead ms/request", "overhead_ms_per_request"), ("tokens/step", "mean_accepted"),
                                        ("identical to plain", "identical_to_plain")]))
        parts.append("\n" + env_line("decode-smollm2-wall.json", d.get("env")) + "\n")
    if e:
        parts.append("An EAGLE-3-style draft (one decoder layer over three fused base layers, training-time test over 5 "
                     f"steps, 1200 steps, 273 s on the H200), greedy with a dynamic tree on {e['prompts']} held-out prompts. "
                     "The decode loop still runs eagerly with host reads per step, so its tok/s is not a speed figure yet; "
                     f"plain decoding in the same run: {e['plain_tok_s']} tok/s.\n")
        rows = [dict(tree=f"top-k {t['top_k']}, depth {t['depth']}, {t['num_nodes']} nodes", acc=t["mean_accept"],
                     same=t["identical"], tps=t["eager_tok_s"]) for t in e["trees"]]
        m = e.get("draft_metrics") or {}
        parts.append(table(rows, [("tree", "tree"), ("tokens/step", "acc"), ("identical to plain", "same"), ("eager tok/s", "tps")]))
        if m.get("eval_accept"):
            parts.append(f"\nHeld-out per-step acceptance of the draft chain: {m['eval_accept']} (Medusa's shipped heads: "
                         "1.99 tokens/step in the same conditions).\n")
        parts.append(env_line("eagle-accept-smollm2-h200.json", e.get("environment")) + "\n")
    if b:
        parts.append(eagle_bench_part(b))
    return "\n".join(parts)


EAGLE_BENCH = "eagle-bench-smollm2-h200.json"


def eagle_bench_part(b: dict) -> str:
    """Plain vs Medusa vs EAGLE trees from `python -m accel.bench.eagle --json` (schema: bench/eagle.py)."""
    rows = []
    for r in b["rows"]:
        plain = r["engine"].startswith("plain")
        rows.append(dict(r, wall_x=1.0 if plain else r.get("wall_speedup_vs_plain"),
                         decode_x=1.0 if plain else r.get("speedup_vs_plain"),
                         tps=r.get("mean_accept", 1.0), cost=1.0 if plain else r.get("step_cost"),
                         same="reference" if plain else r.get("identical")))
    out = [f"### Plain vs Medusa vs EAGLE, every step captured ({b.get('mode', '?')} mode, {b.get('device_name', '?')})\n",
           f"{b['model']}, {b['prompts']} held-out prompts × {b['max_new_tokens']} new tokens, batch 1, greedy; each "
           "engine's step captured once (one warm-up request) and reused. **wall × plain** (request start to last "
           "token, prefill and set-up included) is the governing figure; decode × plain leaves the per-request work "
           "out. Step cost = decode time per step over plain's: what tokens/step must beat. Medusa: "
           f"`{b.get('medusa')}`; EAGLE: `{b.get('eagle')}`.\n",
           table(rows, [("engine", "engine"), ("decode-only tok/s", "tokens_per_s"), ("wall tok/s", "wall_tokens_per_s"),
                        ("**wall × plain**", "wall_x"), ("decode × plain", "decode_x"), ("tokens/step", "tps"),
                        ("step cost (plain steps)", "cost"), ("first capture s", "first_capture_s"),
                        ("identical to plain", "same")])]
    spec = [r for r in rows if not r["engine"].startswith("plain") and r.get("wall_x") is not None]
    if spec:
        w = max(spec, key=lambda r: r["wall_x"])
        out.append(f"\nFastest from request start: {w['engine']}, {w['wall_x']:.2f}× plain "
                   f"({w['tps']:.2f} tokens/step at {w['cost']:.2f} plain steps each).")
    for err in b.get("errors") or []:
        out.append(f"\n{err['engine']}: failed ({err['error']}).")
    m = b.get("draft_metrics") or {}
    if m.get("eval_accept"):
        out.append(f"\nHeld-out per-step acceptance of the EAGLE draft chain at training: {m['eval_accept']}.")
    out.append("\n" + env_line(EAGLE_BENCH, b.get("environment")) + "\n")
    return "\n".join(out)


def index_host_cost_part() -> str:
    name = "experiments/index-host-cost-qwen-h200.json"
    d = load(name)
    if not d:
        return ""
    rows = []
    for n in sorted({x["length"] for x in d["rows"]}):
        at = [x for x in d["rows"] if x["length"] == n and x.get("ref")]
        tot = lambda k, ref=False: sum((x["ref"] if ref else x)[k] for x in at)  # noqa: E731
        rows.append(dict(N=n, layers=len(at), host=tot("host_index_ms"), host_ref=tot("host_index_ms", True),
                         graph=tot("graph_index_ms"), launches=tot("launches_index"), launches_ref=tot("launches_index", True),
                         copies=tot("copies_index"), copies_ref=tot("copies_index", True),
                         same=all(x["same_index"] for x in at)))
    return ("### Index estimation's host cost, every layer of the Qwen pack\n\n"
            "Milliseconds of host time to issue one prefill's index builds (all layers summed), this revision vs the "
            "kernels of commit 24824d9 (`ref`), with launches and host-to-device copies counted by the profiler; "
            "`graph` = the same builds replayed as CUDA graphs (the GPU's own time).\n\n"
            + table(rows, [("N", "N"), ("layers", "layers"), ("host ms", "host"), ("host ms (ref)", "host_ref"),
                           ("graph ms", "graph"), ("launches", "launches"), ("launches (ref)", "launches_ref"),
                           ("copies", "copies"), ("copies (ref)", "copies_ref"), ("same index", "same")])
            + "\n\n" + env_line(name, d.get("env")) + "\n")


def ttft_ceiling_part() -> str:
    """8B-shaped time to first token (8 of 32 layers) against the ceiling its dense run's non-attention part sets."""
    rows, envs = [], []
    for name in ("experiments/ttft-llama3-8b-stream_llm-8layers-h200.json",
                 "experiments/ttft-llama3-8b-stream_llm-8layers-h200-run2.json"):
        d = load(name)
        if not d:
            continue
        envs.append(env_line(name, d.get("env")))
        for r in d["rows"]:
            pd = r.get("profile_dense") or {}
            busy, attn = pd.get("gpu_busy_ms"), (pd.get("buckets") or {}).get("dense attn")
            ceil = busy / (busy - attn) if busy and attn else None
            x = r["dense_ms"] / r["sparse_runtime_ms"]
            sk = ((r.get("profile_sparse") or {}).get("buckets") or {}).get("sparse attn kernel")
            rows.append(dict(file=name.split("/")[-1].replace(".json", ""), N=r["length"], dense=r["dense_ms"],
                             sparse=r["sparse_runtime_ms"], x=f"{x:.2f}×", attn=attn, kernel=sk,
                             ceil=f"{ceil:.2f}×" if ceil else None, share=f"{x / ceil:.0%}" if ceil else None))
    if not rows:
        return ""
    return ("### Time to first token on the 8B shape against its ceiling (A-shape 1024+4096 every head, 8 of 32 layers)\n\n"
            "ceiling = dense GPU time ÷ (dense − its attention): the speed-up if attention cost nothing. The first file "
            "is this session's tile table (128x64, 4 warps, 2 stages for head_dim 128); `-run2` the one before.\n\n"
            + table(rows, [("run", "file"), ("N", "N"), ("dense ms", "dense"), ("sparse ms", "sparse"), ("× dense", "x"),
                           ("dense attn ms", "attn"), ("sparse kernel ms", "kernel"), ("ceiling", "ceil"),
                           ("share of ceiling", "share")])
            + "\n\n" + "\n\n".join(envs) + "\n")


def ppl_probe_part() -> str:
    name = "experiments/qwen-ppl-probe-h200.json"
    d = load(name)
    if not d:
        return ""
    rows = [dict(N=r["length"], text=r["text"], variant=r["variant"], dense=r["ppl_dense"], sparse=r["ppl_sparse"],
                 change=f"{100 * (r['ratio'] - 1):+.2f} %", far=f"{100 * r['far_share']:.1f} %",
                 far_change=f"{100 * (r['ratio_far'] - 1):+.1f} %" if "ratio_far" in r else "—",
                 other_change=f"{100 * (r['ratio_other'] - 1):+.2f} %" if "ratio_other" in r else "—",
                 density=r["density"]) for r in d["rows"]]
    sp = d.get("speed", {})
    speed = "; ".join(f"{k} {v['speedup']:.2f}×" for k, v in sp.items())
    return ("### Where the 32K model's sparse perplexity goes (`scripts/gpu/qwen_ppl_probe.py`)\n\n"
            "Perplexity of the last half, dense vs the shipped pack and variants of it: `vs-only` = A-shape and "
            "block-sparse heads dense; `no-ashape` = A-shape heads dense; `x2` = every budget doubled; `proportional` = "
            "sizes scaled with the prompt instead of kept absolute. Texts: `docs` (the bench's shuffled "
            "documentation paragraphs), `docs-ordered` (the same topics in order), `book` (a continuous novel). A "
            "*far* token ends an 8-token run that also occurs more than 2,048 tokens earlier (dense attention can "
            "copy it); the rest are *other*.\n\n"
            + table(rows, [("N", "N"), ("text", "text"), ("variant", "variant"), ("dense", "dense"), ("sparse", "sparse"),
                           ("change", "change"), ("far tokens", "far"), ("far change", "far_change"),
                           ("other change", "other_change"), ("density", "density")])
            + f"\n\nTime to first token at 31K, sparse × dense, each variant ({d.get('note', '')}): {speed}.\n\n"
            + env_line(name, d.get("env")) + "\n")


def session_experiments_section() -> str:
    parts = [p for p in (ttft_ceiling_part(), index_host_cost_part(), ppl_probe_part()) if p]
    if not parts:
        return ""
    return "## Experiments of 2026-12-03 (session 6): host cost, tiles, the perplexity gap\n\n" + "\n".join(parts)


def render() -> str:
    """The whole page, from whatever results/*.json exist (a section whose file is absent is left out)."""
    IMG.mkdir(parents=True, exist_ok=True)
    head = """# Results

Every figure here comes from a committed JSON file under `results/` (named under each table, with its
device, date and command) and is regenerated by `python scripts/results_page.py`. **Real weights**:
SmolLM2-135M-Instruct (the default model) and, where named, Qwen2.5-Coder-0.5B-Instruct. **Random weights of real shapes**: the Llama-3-8B-shaped
model — its timings are real, its acceptance/quality figures are meaningless and not given. GPU runs
were on one NVIDIA H200 (the device tool's machine); none on an H100.
"""
    body = [head, wall_clock_section(), step_cost_section(), sparse_speed_section(), kernels_section(), prefill_section(), exact_section(), decode_section(), acceptance_section(), training_section(), multigpu_section(), cpu_tree_section(),
            search_section(), quality_section(), long_prefill_section(), ruler_section(), session_experiments_section()]
    return "\n".join(b for b in body if b)


def main():
    (ROOT / "docs" / "results.md").write_text(render())
    print("wrote docs/results.md")


if __name__ == "__main__":
    main()
