"""Where the 32K model's sparse-prefill perplexity goes (GPU): per text, per pack variant, per token class.

results/ruler-qwen2.5-coder-0.5b-h200.json (2026-12-03): forced sparse keeps RULER's averages within 2 points
of dense, yet perplexity on `bench.ruler.natural_text` rises +0.7 / +9.0 / +18.9 % at 8K / 16K / 31K.  That
text is Python-doc paragraphs shuffled with a seed: ~7 % of its second-half 8-grams repeat a passage more
than 2,500 words back, so dense attention can copy them from far away.  Vertical-slash estimation reads
only the last 64 queries, so a mid-prompt query's far source is kept only by chance.  This probe splits
the loss, loading the model once:

- texts: ``docs`` (the bench's shuffled text), ``docs-ordered`` (the same topics in their own order, each
  topic's paragraphs contiguous), and ``book`` (the continuous novel `bench quality --ppl-text book` scores);
- token classes: a scored token is a *far copy* when the 8 tokens ending at it also occur, whole, ending
  more than 2,048 tokens earlier (dense can copy it, a local window cannot); the rest are *other*;
- variants of the pack's patterns: as shipped, non-vertical-slash heads dense, only the A-shape heads
  dense, budgets x2, and proportional scaling from the searched length; each with its 31K time to first
  token (planning included) so quality can be weighed against speed.

    python scripts/gpu/qwen_ppl_probe.py --pack results/qwen2.5-coder-0.5b-patterns-h200.safetensors \
        --lengths 16384,31744 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch


def texts(tok, n_max: int) -> dict[str, list[int]]:
    from accel.bench import ruler
    from accel.bench.ruler_run import natural_ids

    out = {"docs": natural_ids(tok, n_max, 0)}
    ordered = "\n\n".join(ruler._docs())   # topics in name order, each topic's paragraphs contiguous
    out["docs-ordered"] = list(tok(ordered[: 8 * n_max], add_special_tokens=False)["input_ids"])
    out["book"] = natural_ids(tok, n_max, 0, source="book")   # a continuous novel (bench/data)
    return {k: v for k, v in out.items() if len(v) >= n_max + 1}


def far_copy_mask(ids: list[int], start: int, n_gram: int = 8, gap: int = 2048) -> torch.Tensor:
    """(len(ids) - 1 - start,) bool: target token t = ids[i + 1] (i >= start) ends an n-gram seen ending > gap back."""
    last: dict[tuple, int] = {}
    far = torch.zeros(len(ids) - 1 - start, dtype=torch.bool)
    for j in range(n_gram - 1, len(ids)):
        g = tuple(ids[j - n_gram + 1: j + 1])
        prev = last.get(g)
        if prev is not None and j - prev > gap and j - 1 >= start:
            far[j - 1 - start] = True
        last[g] = j
    return far


def variants(layers, n: int):
    """name -> [layer][head] patterns at length n (from the pack's patterns at n)."""
    from accel.kernels import HeadPattern

    def grow(p, f):
        if p.is_dense:
            return p
        a, b = p.size_1, p.size_2
        if p.name == "vertical_and_slash":
            return HeadPattern(p.name, min(int(a * f), n), min(int(b * f), n))
        if p.name == "stream_llm":
            return HeadPattern(p.name, a, min(int(b * f), n))
        return HeadPattern(p.name, max(1, int(a * f)), b)

    def dense_unless(keep):
        return [[p if p.name in keep else HeadPattern("dense") for p in layer] for layer in layers]

    return {"pack": layers,
            "vs-only": dense_unless({"vertical_and_slash"}),
            "no-ashape": dense_unless({"vertical_and_slash", "block_sparse"}),
            "x2": [[grow(p, 2.0) for p in layer] for layer in layers]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", default="results/qwen2.5-coder-0.5b-patterns-h200.safetensors")
    ap.add_argument("--lengths", default="16384,31744")
    ap.add_argument("--speed-length", type=int, default=31744)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    from accel.bench.common import environment
    from accel.bench.prefill import bench_prefill
    from accel.bench.quality import forced_plan, token_nll
    from accel.runtime.model import CompactLM
    from accel.runtime.models import load_model
    from accel.runtime.pack import load_pack
    from accel.runtime.prefill import PrefillPlan, layer_patterns
    from accel.search.calibration import calibration_ids

    lengths = [int(x) for x in a.lengths.split(",")]
    lm = load_model("qwen2.5-coder-0.5b")
    compact, tok = CompactLM.from_hf(lm.model), lm.tokenizer
    pk = load_pack(a.pack)
    info = pk.patterns_info or {}
    out = {"env": environment(f"python scripts/gpu/qwen_ppl_probe.py --pack {a.pack} --lengths {a.lengths}"),
           "pack": a.pack, "scaling": info.get("scaling"), "searched_len": info.get("seq_len"), "rows": [], "speed": {}}
    src = texts(tok, max(lengths))
    t0 = time.time()
    for n in lengths:
        base = layer_patterns(pk, n)
        vs = variants(base, n)
        if info.get("scaling") != "proportional" and info.get("seq_len"):
            from accel.kernels.scaling import scale_layers
            vs["proportional"] = scale_layers([pk.layer_patterns(i) for i in range(len(pk.patterns))],
                                              int(info["seq_len"]), n, "proportional")
        for text, ids in src.items():
            x = torch.tensor([ids[:n]], device=compact.device)
            far = far_copy_mask(ids[:n], n // 2)
            dense = token_nll(compact, x, forced_plan(None))
            for name, layers in vs.items():
                stats: list = []
                nll = token_nll(compact, x, forced_plan(layers, stats))
                row = {"length": n, "text": text, "variant": name, "far_share": far.float().mean().item(),
                       "ppl_dense": math.exp(dense.mean()), "ppl_sparse": math.exp(nll.mean()),
                       "density": sum(s["density"] for s in stats) / max(len(stats), 1)}
                row["ratio"] = row["ppl_sparse"] / row["ppl_dense"]
                for cls, m in (("far", far), ("other", ~far)):
                    if m.any():
                        row[f"nll_{cls}_dense"] = dense[m].mean().item()
                        row[f"nll_{cls}_sparse"] = nll[m].mean().item()
                        row[f"ratio_{cls}"] = math.exp(nll[m].mean() - dense[m].mean())
                out["rows"].append(row)
                print(f"{n:6d} {text:13s} {name:12s} ppl {row['ppl_dense']:7.3f} -> {row['ppl_sparse']:7.3f} "
                      f"({100 * (row['ratio'] - 1):+6.2f} %)  far {100 * row['far_share']:4.1f} % tokens: "
                      f"{100 * (row.get('ratio_far', 1) - 1):+7.1f} %, other {100 * (row.get('ratio_other', 1) - 1):+6.2f} %"
                      f"  density {row['density']:.3f}  [{time.time() - t0:.0f} s]", flush=True)
                with open(a.json, "w") as f:
                    json.dump(out, f, indent=1)
    n = a.speed_length
    ids_for = lambda m: calibration_ids(tok, m).reshape(1, -1)[:, :m].to(compact.device)  # noqa: E731
    for name, layers in variants(layer_patterns(pk, n), n).items():
        [row] = bench_prefill(compact, [n], lambda m, L=layers: L, ids_for=ids_for,
                              plan_for=lambda m, L=layers: PrefillPlan(L, dense_above=None), rep=5)
        out["speed"][name] = {k: row.get(k) for k in ("dense_ms", "sparse_ms", "speedup", "predicted_work")}
        print(f"speed {n} {name:12s} dense {row['dense_ms']:.1f} ms sparse {row['sparse_ms']:.1f} ms "
              f"x{row['speedup']:.2f}", flush=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
