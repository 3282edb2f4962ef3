"""Decode benchmark: transformers generate vs our plain (CUDA-graph) decode vs Medusa, batch 1.

For each model: tokens/s of HF ``generate`` (eager, greedy), of ``generate_plain`` (graph-captured
step; its tokens are checked against the eager step), of ``generate_medusa`` (greedy, mean accepted
length, verify-step time), and the bandwidth utilisation of the plain decode:
bytes read per token (weights, + KV cache) x tok/s / copy bandwidth measured in the same run.

Synthetic models have random weights, hence random heads and ~1 accepted token per Medusa step;
for them the JSON also gives the step-time ratio and the tokens/s Medusa would reach at a given mean
accepted length (``--tau``): tau / verify-step time.

  accel bench decode --model smollm2-135m --json results/decode.json        (real model, its pack's heads)
  accel bench decode --synthetic llama-3-8b --json results/decode-8b.json
  python -m accel.bench.decode --synthetic smollm2-135m llama-3-8b --out results/decode-synthetic.json

``run_decode_bench`` (behind ``accel bench decode``) times plain and Medusa over the held-out chat
prompts (heads/heldout_prompts.jsonl), each request from its start to its last token (wall clock,
prefill and any capture included) beside decode-only tokens/s; speed-ups are wall clock against the
fastest plain mode (``decode_speedup_vs_plain`` keeps the decode-only ratio). Also: mean accepted
tokens per step, the share of prompts whose greedy Medusa output equals plain greedy, batched plain
at growing batch sizes, and ``decode_throughput``: the table ``runtime.decode_rule`` reads from a
pack to choose batched vs speculative decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..runtime.drafters.medusa_heads import MedusaConfig, MedusaHeads
from .common import copy_bandwidth_gbs, environment, synchronize, write_json
from ..runtime.decode import generate_plain
from ..runtime.model import CompactLM
from ..runtime.medusa import generate_medusa
from ..runtime.tree import default_tree

PROMPT = ("Explain, step by step, how a CPU cache works and why it makes programs faster. "
          "Give a concrete example with numbers.")


def weight_bytes(model: CompactLM) -> int:
    """Bytes read per decoded token for weights: every unique tensor except an untied embedding table
    (only one row of it is read)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if p.data_ptr() in seen or (name == "tok_embeddings" and model.output.weight is not p):
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    return total


def kv_bytes(model: CompactLM) -> int:
    """Bytes of one batch row of the static cache (the decode step reads all of it, masked)."""
    return sum(2 * k[0].numel() * k.element_size() for k, _ in model.cache_view(1))


def hf_generate_tok_s(hf, ids, n):
    kw = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    hf.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    synchronize()
    t = time.perf_counter()
    out = hf.generate(ids, **kw)
    synchronize()
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - t)


def random_heads(model: CompactLM, num_heads: int) -> MedusaHeads:
    cfg = MedusaConfig(num_heads=num_heads, num_layers=1, hidden_size=model.output.weight.shape[1],
                       vocab_size=model.vocab_size, projection="shared")
    heads = MedusaHeads(cfg, model.output.weight).to(model.device, model.dtype)
    for blk in heads.blocks:
        for lin in blk.layers:
            torch.nn.init.normal_(lin.weight, std=0.02)
    return heads.eval().requires_grad_(False)


def heads_from_pack(path: str, model: CompactLM):
    from ..runtime.drafters.medusa import MedusaDrafter
    from ..runtime.pack import load_pack

    pack = load_pack(path)
    if not pack.has_heads:
        raise SystemExit(f"--pack {path} holds no Medusa heads")
    return MedusaDrafter.load_heads(pack, model)


def bench_model(name, hf, prompt_ids, args, bw, heads=None, tree=None, eos_ids=()):
    row = {"model": name, "params": sum(p.numel() for p in hf.parameters()), "dtype": str(hf.dtype)}
    dev = hf.device
    ids = torch.tensor([prompt_ids], device=dev)
    row["prompt_len"] = len(prompt_ids)
    if not args.skip_hf:
        row["hf_generate_tok_s"] = hf_generate_tok_s(hf, ids, args.hf_tokens)
        print(f"[{name}] HF generate: {row['hf_generate_tok_s']:.1f} tok/s", flush=True)

    model = CompactLM.from_hf(hf)
    n = args.new_tokens
    model.setup_cache(1, len(prompt_ids) + n + 256)  # one cache for all runs below
    modes = args.modes if dev.type == "cuda" else ["eager"]
    eager = generate_plain(model, [prompt_ids], args.check_tokens, compile="eager")[0]
    row["eager_tok_s"] = eager.tokens_per_s
    plain = {}
    for mode in modes:
        t = time.perf_counter()
        generate_plain(model, [prompt_ids], 8, compile=mode)  # warm-up + capture (+ compile)
        setup_s = time.perf_counter() - t
        r = generate_plain(model, [prompt_ids], n, compile=mode)[0]
        plain[mode] = r
        row[f"plain_{mode}"] = dict(tok_s=r.tokens_per_s, step_ms=1e3 * r.decode_s / max(1, r.num_new - 1),
                                    setup_s=setup_s, equals_eager=r.tokens[: len(eager.tokens)] == eager.tokens)
        print(f"[{name}] plain {mode}: {r.tokens_per_s:.1f} tok/s (setup {setup_s:.1f} s), "
              f"== eager tokens: {row[f'plain_{mode}']['equals_eager']}", flush=True)
    best = max(plain, key=lambda k: plain[k].tokens_per_s)
    r = plain[best]
    row.update(plain_mode=best, plain_tok_s=r.tokens_per_s, plain_step_ms=row[f"plain_{best}"]["step_ms"],
               plain_prefill_ms=1e3 * r.prefill_s, graph_equals_eager=row[f"plain_{modes[0]}"]["equals_eager"])
    wb, kb = weight_bytes(model), kv_bytes(model)
    row.update(weight_bytes=wb, kv_cache_bytes=kb, cache_slots=model.max_seq_len)
    if bw:
        row["bandwidth_bound_tok_s"] = bw * 1e9 / wb
        row["bandwidth_util_weights"] = wb * r.tokens_per_s / (bw * 1e9)
        row["bandwidth_util_weights_kv"] = (wb + kb) * r.tokens_per_s / (bw * 1e9)

    if not args.skip_medusa:
        synthetic = heads is None
        heads = heads if heads is not None else random_heads(model, args.heads)
        tree = tree or default_tree(heads.config.num_heads, args.tree_nodes)
        med = {}
        for mode in modes:
            generate_medusa(model, heads, prompt_ids, 16, tree=tree, compile=mode, eos_ids=eos_ids)  # warm-up
            m = generate_medusa(model, heads, prompt_ids, n, tree=tree, compile=mode, eos_ids=eos_ids)
            steps = max(1, len(m.accept_lengths))
            med[mode] = m
            row[f"medusa_{mode}"] = dict(tok_s=m.tokens_per_s, mean_accept=sum(m.accept_lengths) / steps,
                                         step_ms=1e3 * m.decode_s / steps,
                                         equals_plain=m.tokens == plain[mode].tokens[: len(m.tokens)])
            print(f"[{name}] medusa {mode}: {row[f'medusa_{mode}']}", flush=True)
        mb = max(med, key=lambda k: med[k].tokens_per_s)
        m, info = med[mb], row[f"medusa_{mb}"]
        row.update(medusa_mode=mb, medusa_tok_s=m.tokens_per_s, medusa_mean_accept=info["mean_accept"],
                   medusa_step_ms=info["step_ms"], medusa_tree_nodes=len(tree),
                   medusa_heads="random" if synthetic else "pack",
                   medusa_speedup_vs_plain=m.tokens_per_s / r.tokens_per_s,
                   medusa_step_over_plain_step=info["step_ms"] / row["plain_step_ms"],
                   medusa_projected_tok_s=args.tau / info["step_ms"] * 1e3, projected_at_tau=args.tau)
    del model
    return row


def heldout_prompts() -> list[dict]:
    from importlib import resources

    text = resources.files("accel.heads").joinpath("heldout_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(l) for l in text.splitlines() if l.strip()]


@torch.no_grad()
def _now(dev) -> float:
    """Host clock after the device has finished (wall-clock timing of a whole request)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def run_decode_bench(model="smollm2-135m", synthetic=None, pack=None, max_new_tokens=256, num_prompts=8,
                     hf_baseline=True, device=None, dtype=None, modes=None, log=print):
    """-> (rows, extra): one row per engine (hf, plain-<mode>, medusa-<mode>) and shared facts."""
    from ..runtime.errors import AccelError
    from ..runtime.generate import default_pack_path
    from ..runtime.models import DEFAULT_MODEL, load_model, pick_device, pick_dtype
    from ..runtime.pack import load_pack, validate_for_model

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    modes = modes or (["exact", "graph"] if dev.type == "cuda" else ["eager"])
    if synthetic:
        from .synthetic import build_synthetic

        hf = build_synthetic(synthetic, device=dev, dtype=dt, max_position_embeddings=8192)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, hf.config.vocab_size, (128,), generator=g).tolist() for _ in range(num_prompts)]
        name, eos, pk = f"synthetic:{synthetic}", (), None
    else:
        lm = load_model(model, device=str(dev), dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, "fp32"))
        hf, name, eos = lm.model, lm.name, tuple(lm.eos_ids)
        tok = lm.tokenizer
        prompts = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"] for p in heldout_prompts()[:num_prompts]]
        pk = load_pack(pack) if pack else (load_pack(default_pack_path()) if name == DEFAULT_MODEL and default_pack_path() else None)
        if pk is not None:
            validate_for_model(pk, hf, lm.fingerprint, where=f"pack {pack or 'default'}")
            if not pk.has_heads:
                pk = None
    cm = CompactLM.from_hf(hf)
    longest = max(map(len, prompts))
    cm.setup_cache(1, longest + max_new_tokens + 512)
    bw = copy_bandwidth_gbs() if dev.type == "cuda" else None
    wb = weight_bytes(cm)
    rows = []
    hf_tok_s = None
    if hf_baseline:
        hf_tok_s = hf_generate_tok_s(hf, torch.tensor([prompts[0]], device=dev), min(64, max_new_tokens))
        rows.append(dict(engine="transformers (eager)", tokens_per_s=hf_tok_s))
        log(f"HF generate: {hf_tok_s:.1f} tok/s")
    plain_best, plain_tokens = None, {}
    for mode in modes:
        generate_plain(cm, [prompts[0]], 8, compile=mode)  # warm-up + capture / compile
        n = s = w = 0.0
        for i, p in enumerate(prompts):
            t0 = _now(dev)
            [r] = generate_plain(cm, [p], max_new_tokens, compile=mode, eos_ids=eos)
            w += _now(dev) - t0  # request start to last token: prefill, set-up and any capture included
            plain_tokens.setdefault(mode, []).append(r.tokens)
            n, s = n + r.num_new, s + r.decode_s
        tps = n / s
        row = dict(engine=f"plain ({mode})", tokens_per_s=tps, wall_tokens_per_s=n / w, step_ms=1e3 * s / n,
                   overhead_ms_per_request=1e3 * (w - s) / len(prompts))
        if bw:
            row["bandwidth_util"] = wb * tps / (bw * 1e9)
        rows.append(row)
        log(f"plain {mode}: {n / w:.1f} tok/s wall, {tps:.1f} decode-only")
        if plain_best is None or n / w > plain_best[2]:  # the fastest plain mode by wall clock
            plain_best = (mode, tps, n / w, row)
    # batched plain in the fastest mode, at growing batch sizes: the table runtime.decode_rule uses to
    # choose batched vs speculative for a prompt file (wall clock: all prefills + the batch's decode)
    best_mode, best_row = plain_best[0], plain_best[3]
    batched_wall = {1: plain_best[2]}
    if len(prompts) > 1:
        sizes = sorted({b for b in (2, 4, 8, 16, 32, 64) if b < len(prompts)} | {len(prompts)})
        for b in sizes:
            t0 = _now(dev)
            batch = generate_plain(cm, prompts[:b], max_new_tokens, compile=best_mode, eos_ids=eos)
            wall_b = _now(dev) - t0
            batched_wall[b] = sum(r.num_new for r in batch) / wall_b
        # batch invariance: one batch == one by one (the last, largest batch)
        same = sum(r.tokens == t for r, t in zip(batch, plain_tokens[best_mode]))
        best_row["batched_identical_to_single"] = f"{same}/{len(prompts)}"
        best_row["batched_tokens_per_s"] = sum(r.num_new for r in batch) / max(r.decode_s for r in batch)
        best_row["batched_wall_tokens_per_s"] = {str(b): t for b, t in batched_wall.items()}
        log(f"plain {best_mode} batched: " + ", ".join(f"batch {b}: {t:.0f}" for b, t in batched_wall.items())
            + f" tok/s wall; batched == single {same}/{len(prompts)}")
    extra = dict(model=name, dtype=str(dt), device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                 copy_bandwidth_gbs=bw, weight_bytes=wb, max_new_tokens=max_new_tokens, prompts=len(prompts),
                 plain_best_mode=plain_best[0])
    from ..runtime.drafters.medusa import MedusaDrafter

    heads, tree = (MedusaDrafter.load_heads(pk, cm) if pk is not None else (random_heads(cm, 4), None))
    spec_best = None
    extra["heads"] = "pack" if pk is not None else "random (speed only)"
    tree = tree or default_tree(heads.config.num_heads)
    accept_all = []
    for mode in modes:
        generate_medusa(cm, heads, prompts[0], 16, tree=tree, compile=mode, eos_ids=eos)  # warm-up
        n = s = w = 0.0
        same, acc = 0, []
        for i, p in enumerate(prompts):
            t0 = _now(dev)
            m = generate_medusa(cm, heads, p, max_new_tokens, tree=tree, compile=mode, eos_ids=eos)
            w += _now(dev) - t0
            n, s = n + m.num_new, s + m.decode_s
            acc += m.accept_lengths
            same += m.tokens == plain_tokens[mode][i]
        tps = n / s
        # speed-ups from wall clock (request start to last token) against the fastest plain mode's wall
        # clock; the decode-only ratio is kept beside it as decode_speedup_vs_plain
        rows.append(dict(engine=f"medusa ({mode})", tokens_per_s=tps, wall_tokens_per_s=n / w,
                         mean_accepted=sum(acc) / max(len(acc), 1), identical_to_plain=f"{same}/{len(prompts)}",
                         speedup_vs_plain=(n / w) / plain_best[2], wall_speedup_vs_plain=(n / w) / plain_best[2],
                         decode_speedup_vs_plain=tps / plain_best[1],
                         overhead_ms_per_request=1e3 * (w - s) / len(prompts)))
        if spec_best is None or n / w > spec_best[1]:
            spec_best = (mode, n / w)
        accept_all = acc
        log(f"medusa {mode}: {n / w:.1f} tok/s wall ({(n / w) / plain_best[2]:.2f}x plain), {tps:.1f} decode-only, "
            f"accepted {sum(acc) / max(len(acc), 1):.2f}/step, identical {same}/{len(prompts)}")
    if hf_tok_s:  # transformers' generate is timed from its call (prefill included): compare wall clocks
        for r in rows[1:]:
            r["speedup_vs_hf"] = r["wall_tokens_per_s"] / hf_tok_s
    extra.update(tree_nodes=len(tree), accept_lengths=accept_all)
    # the measured table runtime.decode_rule reads from a pack's provenance (accel bench decode --into-pack)
    extra["decode_throughput"] = dict(plain_tok_s={str(b): t for b, t in batched_wall.items()},
                                      speculative_tok_s=spec_best[1], device_type=dev.type, device=extra["device"],
                                      plain_mode=best_mode, speculative_mode=spec_best[0], heads=extra["heads"],
                                      max_new_tokens=max_new_tokens)
    return rows, extra


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="a transformers model folder (Llama family)")
    ap.add_argument("--gguf", help="a .gguf file (needs the gguf package)")
    ap.add_argument("--pack", help="acceleration pack with Medusa heads (for --model-dir/--gguf)")
    ap.add_argument("--synthetic", nargs="*", default=[], help="random-weight shapes, e.g. smollm2-135m llama-3-8b")
    ap.add_argument("--layers", type=int, help="override the synthetic layer count (smoke tests)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--hf-tokens", type=int, default=64)
    ap.add_argument("--check-tokens", type=int, default=32, help="eager tokens compared with the graph run")
    ap.add_argument("--prompt-len", type=int, default=128, help="synthetic prompt length")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--tree-nodes", type=int, default=63)
    ap.add_argument("--tau", type=float, default=2.5, help="mean accepted length for the projected Medusa tok/s")
    ap.add_argument("--modes", nargs="+", default=["exact", "graph"],
                    help="step capture modes to time (exact, graph); the best is reported")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-medusa", action="store_true")
    ap.add_argument("--out", required=True, help="JSON output path")
    args = ap.parse_args(argv)
    if not (args.model_dir or args.gguf or args.synthetic):
        ap.error("give --model-dir, --gguf and/or --synthetic NAME...")

    torch.manual_seed(0)
    env = environment(" ".join(["python -m accel.bench.decode"] + (argv if argv is not None else sys.argv[1:])))
    bw = copy_bandwidth_gbs() if args.device == "cuda" else None
    print(f"copy bandwidth: {bw and round(bw)} GB/s", flush=True)
    rows = []
    with torch.no_grad():
        if args.model_dir or args.gguf:
            from ..runtime.models import load_model

            lm = load_model(args.gguf or args.model_dir, device=args.device, dtype="bfloat16")
            heads, tree = heads_from_pack(args.pack, CompactLM.from_hf(lm.model)) if args.pack else (None, None)
            ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True) \
                if getattr(lm.tokenizer, "chat_template", None) else lm.tokenizer(PROMPT)["input_ids"]
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            rows.append(bench_model(lm.name, lm.model, ids, args, bw, heads, tree))
            del lm
        for name in args.synthetic:
            from .synthetic import build_synthetic

            hf = build_synthetic(name, device=args.device, dtype=torch.bfloat16, max_position_embeddings=8192,
                                 num_hidden_layers=args.layers)
            g = torch.Generator().manual_seed(0)
            prompt = torch.randint(3, hf.config.vocab_size, (args.prompt_len,), generator=g).tolist()
            rows.append(bench_model(f"synthetic:{name}", hf, prompt, args, bw))
            write_json(args.out, {**env, "copy_bandwidth_gbs": bw, "new_tokens": args.new_tokens, "results": rows})
            del hf
            if args.device == "cuda":
                torch.cuda.empty_cache()
    write_json(args.out, {**env, "copy_bandwidth_gbs": bw, "new_tokens": args.new_tokens, "results": rows})
    print(f"wrote {args.out}")
    cols = ["model", "hf_generate_tok_s", "plain_tok_s", "bandwidth_util_weights", "medusa_tok_s",
            "medusa_mean_accept", "medusa_step_over_plain_step", "medusa_projected_tok_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols))


if __name__ == "__main__":
    main()
