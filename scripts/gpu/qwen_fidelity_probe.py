"""Which change keeps RULER on the real 32K model: a quick A/B of pack variants in ONE process (GPU).

The forced-sparse RULER rows of results/ruler-qwen2.5-coder-0.5b-h200.json lose 12-45 points on
multi-key needles, variable tracking and common/frequent-word extraction.  This probe runs the weak
tasks on the same cases for several pack variants, loading the model once (a `bench quality` call per
variant would reload it each time), then times the 31K prefill of each variant as the runtime plans it:

    python scripts/gpu/qwen_fidelity_probe.py --variant base=results/qwen...safetensors \
        --variant base+tail=results/qwen...safetensors:tail=64 --variant wide=/root/work/packA.safetensors \
        --tasks niah_multikey_1,vt,cwe,fwe --lengths 8192,16384 --samples 16 --json out.json

A variant is NAME=PACK[:tail=ROWS][:scaling=RULE] (overrides of the pack's patterns_info).  ``--wait``
waits for a pack file that another process is still writing (the search, run beside the first variants).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch


def parse_variant(s: str):
    name, rest = s.split("=", 1)
    path, *opts = rest.split(":")
    over = {}
    for o in opts:
        k, v = o.split("=")
        over[{"tail": "dense_tail"}.get(k, k)] = int(v) if v.isdigit() else v
    return name, path, over


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--tasks", default="niah_multikey_1,vt,cwe,fwe")
    ap.add_argument("--lengths", default="8192,16384")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--speed-length", type=int, default=31744)
    ap.add_argument("--wait", type=float, default=400.0, help="seconds to wait for a pack file still being written")
    ap.add_argument("--json", required=True)
    ap.add_argument("--pick", default=None, help="write the best variant's pack (overrides applied) here: the "
                    "best mean sparse-dense delta on the probed rows; within 2 points, the faster at --speed-length")
    a = ap.parse_args()

    from accel.bench.common import environment
    from accel.bench.prefill import bench_prefill
    from accel.bench.quality import ruler_suite
    from accel.runtime.model import CompactLM
    from accel.runtime.models import load_model
    from accel.runtime.pack import load_pack
    from accel.runtime.prefill import dense_tail_rows, layer_patterns, plan_prefill
    from accel.search.calibration import calibration_ids

    lm = load_model("qwen2.5-coder-0.5b")
    hf, tok = lm.model, lm.tokenizer
    compact = CompactLM.from_hf(hf)
    eos = sorted({hf.config.eos_token_id} if isinstance(hf.config.eos_token_id, int)
                 else set(hf.config.eos_token_id or []))
    if getattr(tok, "eos_token_id", None) is not None:
        eos = sorted(set(eos) | {tok.eos_token_id})
    tasks = a.tasks.split(",")
    lengths = [int(x) for x in a.lengths.split(",")]
    out = {"env": environment("python scripts/gpu/qwen_fidelity_probe.py " + " ".join(
        f"--variant {v}" for v in a.variant) + f" --tasks {a.tasks} --lengths {a.lengths} --samples {a.samples}"),
           "variants": {}}

    def save():
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)

    packs = {}
    for spec in a.variant:
        name, path, over = parse_variant(spec)
        t0 = time.time()
        if path.startswith("/root/"):   # a pack a background search writes: it touches PATH.done when finished
            while not os.path.exists(path + ".done") and time.time() - t0 < a.wait:
                time.sleep(2)
        if not os.path.exists(path):
            print(f"{name}: no pack at {path}, skipped", flush=True)
            continue
        pk = load_pack(path)
        if over:
            pk = copy.copy(pk)
            pk.patterns_info = {**pk.patterns_info, **over}
        packs[name] = pk
        tail = dense_tail_rows(pk)
        t0 = time.time()
        res = ruler_suite(compact, tok, tasks, lengths, lambda n, pk=pk: layer_patterns(pk, n), samples=a.samples,
                          batch=16, eos_ids=eos, dense_tail=tail)
        out["variants"][name] = {"pack": path, "overrides": over, "dense_tail": tail,
                                 "scaling": pk.patterns_info.get("scaling"), "rows": res["rows"],
                                 "averages": res["averages"], "wall_s": time.time() - t0}
        save()
        print(f"{name} ({time.time() - t0:.0f} s): " + "  ".join(
            f"{r['task']}@{r['length']} {r['dense']:.0f}/{r['sparse']:.0f} d{r['density']:.2f}" for r in res["rows"]),
              flush=True)
    # speed, after every search is done: the runtime's plan (planning included) at the speed length
    n = a.speed_length
    ids_for = lambda m: calibration_ids(tok, m).reshape(1, -1)[:, :m].to(compact.device)  # noqa: E731
    for name, pk in packs.items():
        rows = bench_prefill(compact, [n], lambda m, pk=pk: layer_patterns(pk, m), ids_for=ids_for,
                             plan_for=lambda m, pk=pk: plan_prefill(pk, m, compact.device, override=1), rep=5)
        out["variants"][name]["speed"] = rows[0]
        save()
    if a.pick and out["variants"]:
        from accel.runtime.pack import save_pack

        def key(name):
            v = out["variants"][name]
            return sum(r["delta"] for r in v["rows"]) / max(len(v["rows"]), 1)
        best = max(out["variants"], key=key)
        near = [n_ for n_ in out["variants"] if key(n_) >= key(best) - 2.0]
        best = max(near, key=lambda n_: out["variants"][n_].get("speed", {}).get("speedup", 0.0))
        out["picked"] = best
        save_pack(packs[best], a.pick)
        save()
        print(f"picked {best} -> {a.pick}")
    print("\nvariant          " + " ".join(f"{t[:10]:>10}@{n // 1024}K" for n in lengths for t in tasks)
          + "   avg d-s   31K dense/sparse ms  x")
    for name, v in out["variants"].items():
        cells = []
        for n in lengths:
            for t in tasks:
                r = next((r for r in v["rows"] if r["task"] == t and r["length"] == n), None)
                cells.append(f"{r['dense']:5.0f}/{r['sparse']:<5.0f}" if r else " " * 11)
        delta = sum(r["delta"] for r in v["rows"]) / max(len(v["rows"]), 1)
        sp = v.get("speed", {})
        print(f"{name:16} " + " ".join(f"{c:>13}" for c in cells)
              + f"   {delta:+6.1f}   {sp.get('dense_ms', float('nan')):7.1f}/{sp.get('sparse_ms', float('nan')):<7.1f}"
              f" {sp.get('speedup', float('nan')):.2f}")


if __name__ == "__main__":
    main()
