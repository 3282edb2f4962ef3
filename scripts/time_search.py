#!/usr/bin/env python3
"""Time `accel search-patterns` on a Llama-3-8B-shaped model with random weights, on one GPU.

The model (hidden 4096, 32 layers, 32 q heads, 8 kv heads, d=128, MLP 14336, vocab 128256) is built in
bf16 directly on the GPU (no download, no checkpoint), the calibration input is random token ids of the
requested length, and the search is the library's `run_search` (the same code the CLI runs), followed by
the held-out validation pass (dense vs sparse through the kernels' hook).  Random weights give
meaningless patterns but the real cost: every layer's q/k, every candidate index, every recall chunk.

    python3 scripts/time_search.py --seq-len 32768 [--target-recall 0.95] [--output results/search-time-h100.json]

The last stdout line is one JSON object: device, versions, date, command, wall times, peak memory.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
import traceback


def build_model(layers: int, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, intermediate_size=14336, vocab_size=128256, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=32, help="fewer for a quick smoke run")
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--target-recall", type=float, default=None)
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--output", default=None, help="also write the JSON record here")
    args = ap.parse_args()

    record = {"benchmark": "search-patterns wall time, Llama-3-8B-shaped random weights",
              "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "seq_len": args.seq_len, "layers": args.layers, "budget": args.budget,
              "target_recall": args.target_recall, "python": platform.python_version()}
    t_all = time.perf_counter()
    try:
        import torch
        import transformers

        record.update(torch=torch.__version__, transformers=transformers.__version__,
                      cuda=torch.version.cuda)
        try:
            import triton
            record["triton"] = triton.__version__
        except Exception:
            record["triton"] = None
        if args.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise SystemExit("no CUDA GPU here: this script times the GPU search (use --device cpu --layers 2 "
                                 "--seq-len 2048 for a smoke run)")
            record["device"] = torch.cuda.get_device_name(args.device)
            torch.cuda.reset_peak_memory_stats(args.device)
        else:
            record["device"] = f"cpu ({platform.processor() or platform.machine()})"

        from accel.search import SearchConfig, run_search, validate

        t0 = time.perf_counter()
        model = build_model(args.layers, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        record["build_model_s"] = round(time.perf_counter() - t0, 2)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 128256, (1, args.seq_len), generator=g)
        cfg = SearchConfig(seq_len=args.seq_len, budget=args.budget, target_recall=args.target_recall)

        def on_layer(i, L, pats, dens):
            print(f"layer {i + 1}/{L}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        result = run_search(model, ids, cfg, on_layer=on_layer)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        record["search_s"] = round(time.perf_counter() - t0, 2)
        record["candidates_per_layer"] = result.candidates_per_layer
        record["summary"] = result.summary()
        if not args.no_validate:
            held = torch.randint(0, 128256, (1, args.seq_len), generator=g)
            t0 = time.perf_counter()
            record["validation"] = validate(model, held, result)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            record["validate_s"] = round(time.perf_counter() - t0, 2)
        if args.device.startswith("cuda"):
            record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(args.device) / 2 ** 30, 2)
        record["ok"] = True
    except BaseException as e:  # noqa: BLE001 - always end with the JSON line
        traceback.print_exc(file=sys.stderr)
        record["ok"] = False
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    record["wall_s"] = round(time.perf_counter() - t_all, 2)
    line = json.dumps(record, default=str)
    if args.output:
        from pathlib import Path

        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(line, flush=True)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
