"""The RULER suite's speed, old path vs new, on the same cases (GPU): ms per case pair (dense + sparse)
and per phase, and whether the batched runner gives each case the old path's answers.

Old path (what ``ruler_suite`` did before bench/ruler_run.py): every case prefilled alone through
``generate_plain`` (its own prefill, one decode loop per mode), cases built whole by the original
generator (``make_case(..., reference=True)``, timed apart). New path: ``bench.ruler_run.ruler_suite``
(one (B, N) prefill per mode, the 2B rows decoded together, cases built ahead during the dense prefill).

    python scripts/gpu/ruler_speed.py --model qwen2.5-coder-0.5b --pack PACK \
        --lengths 4k,31k --tasks niah_single_2,niah_multikey_2,cwe --samples 16 --batch 16 --json $OUT/ruler-speed.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--pack", default=None)
    ap.add_argument("--pattern", default=None)
    ap.add_argument("--lengths", default="4k,31k")
    ap.add_argument("--tasks", default="niah_single_2,niah_multikey_2,cwe")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    from pathlib import Path

    from accel.bench.quality import forced_plan
    from accel.bench.ruler import TASKS, make_case
    from accel.bench.ruler_run import ruler_suite
    from accel.cli.bench import _model_and_patterns, _tail
    from accel.cli.common import parse_length
    from accel.runtime.decode import generate_plain
    from accel.runtime.model import CompactLM

    t = time.perf_counter()
    hf, tok, name, patterns_for, pk = _model_and_patterns(a.model, None, Path(a.pack) if a.pack else None, a.pattern,
                                                         a.device, None, None)
    compact = CompactLM.from_hf(hf)
    tail = _tail(pk, a.pattern)  # the pack's exact last rows, as bench quality runs them
    load_s = time.perf_counter() - t
    eos = sorted({hf.config.eos_token_id} if isinstance(hf.config.eos_token_id, int) else set(hf.config.eos_token_id or []))
    if getattr(tok, "eos_token_id", None) is not None:
        eos = sorted(set(eos) | {tok.eos_token_id})
    lengths = [parse_length(x) for x in a.lengths.split(",")]
    cuda = compact.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tasks = a.tasks.split(",")
    out = {"model": name, "load_s": load_s, "samples": a.samples, "batch": a.batch, "rows": []}

    for n in sorted(lengths):  # ascending, new then old per length: both decode on a cache sized for n
        pats = patterns_for(n)
        # warm-up: kernels compiled outside the timings (both paths run the same kernels)
        ruler_suite(compact, tok, tasks[:1], [n], patterns_for, samples=2, batch=2, eos_ids=eos, dense_tail=tail)
        new = ruler_suite(compact, tok, tasks, [n], patterns_for, samples=a.samples, batch=a.batch, eos_ids=eos,
                          examples=a.samples, dense_tail=tail)
        for task in tasks:
            row = next(r for r in new["rows"] if r["task"] == task and r["length"] == n)
            t = time.perf_counter()
            cases = [make_case(tok, task, n, i, reference=True) for i in range(a.samples)]
            ref_cases_s = time.perf_counter() - t
            t = time.perf_counter()
            fast = [make_case(tok, task, n, i) for i in range(a.samples)]
            fast_cases_s = time.perf_counter() - t
            assert all(x.ids == y.ids for x, y in zip(cases, fast)), (task, n)
            old = {"dense": [], "sparse": []}
            phase = {"dense": 0.0, "sparse": 0.0}
            for i in range(0, a.samples, a.batch):
                chunk = cases[i:i + a.batch]
                for m in ("dense", "sparse"):
                    sync()
                    t = time.perf_counter()
                    plan = forced_plan(pats if m == "sparse" else None, [], tail)
                    res = generate_plain(compact, [c.ids for c in chunk], TASKS[task].max_new_tokens, eos_ids=eos,
                                         compile="graph" if cuda else "eager", plans=[plan] * len(chunk))
                    old[m] += [tok.decode(r.tokens, skip_special_tokens=True) for r in res]
                    phase[m] += time.perf_counter() - t
            same = {m: sum(e[m] == o for e, o in zip(row["examples"], old[m])) / a.samples for m in old}
            score = {m: 100 * sum(c.score(x) for c, x in zip(cases, old[m])) / a.samples for m in old}
            r = {"task": task, "length": n,
                 "old_ms_per_pair": 1000 * (sum(phase.values()) + ref_cases_s) / a.samples,
                 "old_phases_ms": {"cases": 1000 * ref_cases_s / a.samples,
                                   "dense (prefill+decode)": 1000 * phase["dense"] / a.samples,
                                   "sparse (prefill+decode)": 1000 * phase["sparse"] / a.samples},
                 "new_ms_per_pair": 1000 * row["wall_s"] / row["samples"],
                 "new_phases_ms": {k: 1000 * v / row["samples"] for k, v in row["timing"].items()},
                 "fast_cases_ms": 1000 * fast_cases_s / a.samples,
                 "identical_to_old": same, "old_score": score, "new_score": {"dense": row["dense"], "sparse": row["sparse"]}}
            out["rows"].append(r)
            print(json.dumps(r), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
