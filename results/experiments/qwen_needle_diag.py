"""Issue 15 diagnosis (CPU, real Qwen2.5-Coder-0.5B): why do cheap searched patterns lose needles?

On the *dense* q/k of RULER needle cases (one dense forward each, transformers + capture_qk) and for a
few pattern sets built on the same q/k with the runtime's own `build_index`:
  * per (layer, head) the attention mass of the prompt's last rows (question + answer prefix) on the
    needle value's tokens (retrieval heads: where that mass is large), and the share of it the index keeps;
  * the attention-mass recall over those last rows vs over the last 12.5 % of rows (what the search scores).
Usage: python results/experiments/qwen_needle_diag.py OUT.json [length] [samples] [budgets, e.g. 0.1,0.2]
  with budgets: the search at each budget with --retrieval-weight 0 (old objective) and 0.5 (new)
"""
import json, sys, time
import torch
from accel.runtime.models import load_model
from accel.bench.ruler import make_cases
from accel.kernels import build_index, HeadPattern
from accel.kernels.hook import capture_qk
from accel.search import SearchConfig, run_search, calibration_ids
from accel.search.score import attention_probs, score_rows
from accel.search.cost import candidates_for_budget

out_path = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
S = int(sys.argv[3]) if len(sys.argv) > 3 else 2
t0 = time.time()
lm = load_model("qwen2.5-coder-0.5b", device="cpu", dtype="fp32")
tok, model = lm.tokenizer, lm.model
L, Hq = model.config.num_hidden_layers, model.config.num_attention_heads
res = {"command": "python " + " ".join(sys.argv), "length": N, "samples": S, "timings": {}}

# the search as shipped (budget 0.1, mixed calibration) and target-recall 0.95
sets = {}
configs = [("search_b0.1", SearchConfig(seq_len=N, budget=0.1, retrieval_weight=0.0)),
           ("search_r0.95", SearchConfig(seq_len=N, target_recall=0.95, retrieval_weight=0.0))]
if len(sys.argv) > 4:
    configs = [(f"search_b{b}_w{w}", SearchConfig(seq_len=N, budget=float(b), retrieval_weight=w))
               for b in sys.argv[4].split(",") for w in (0.0, 0.5)]
for name, cfg in configs or [("search_b0.1", SearchConfig(seq_len=N, budget=0.1)),
                  ("search_r0.95", SearchConfig(seq_len=N, target_recall=0.95))]:
    t = time.time()
    r = run_search(model, calibration_ids(tok, N, kind="mixed", seed=0), cfg)
    sets[name] = r.layers
    res[name] = {"summary": r.summary(), "seconds": time.time() - t,
                 "per_layer_density": [round(sum(d) / len(d), 3) for d in r.density],
                 "per_layer_counts": [{p.name: sum(q.name == p.name for q in lay) for p in lay} for lay in r.layers]}
    print(name, res[name]["summary"], f"{time.time() - t:.0f}s", flush=True)
# uniform candidates at budget 0.1 (each pattern kind / slash share)
for c in (candidates_for_budget(N, 64, 0.1) if len(sys.argv) <= 4 else []):
    sets[f"uniform_{c.name}:{c.size_1}:{c.size_2}"] = [[c] * Hq for _ in range(L)]


def needle_cols(ids, value):
    v = tok(value, add_special_tokens=False)["input_ids"]
    for i in range(len(ids) - len(v), -1, -1):
        if ids[i:i + len(v)] == v:
            return list(range(i, i + len(v)))
    raise ValueError("needle not found")


def kept_mask(index, h, r0, r1, n):
    m = torch.zeros(r1 - r0, n, dtype=torch.bool)
    if bool(index.dense_heads[h]):
        m[:] = True
        return m
    for r in range(r0, r1):
        qb = r // index.block_m
        for j in range(int(index.block_count[0, h, qb])):
            o = int(index.block_offset[0, h, qb, j])
            m[r - r0, max(o, 0):min(o + index.block_n, n)] = True
        for j in range(int(index.column_count[0, h, qb])):
            c = int(index.column_index[0, h, qb, j])
            if 0 <= c < n:
                m[r - r0, c] = True
    return m & (torch.arange(n)[None] <= torch.arange(r0, r1)[:, None])


cases_out = []
for task in ("niah_single_2", "niah_multikey_1", "niah_multikey_3"):
    for c in make_cases(tok, task, N, S, seed=4242):
        cols = sorted({j for a in c.answers for j in needle_cols(c.ids, a)})
        tail = 32  # question + chat template + answer prefix
        per = {k: [[None] * Hq for _ in range(L)] for k in sets}
        mass = [[0.0] * Hq for _ in range(L)]
        late = {k: [] for k in sets}
        qrec = {k: [] for k in sets}

        def on_qk(li, q, k, scaling):
            q, k = q.detach().float(), k.detach().float()
            p = attention_probs(q, k, N - tail, N, scaling)[0]                          # (Hq, R, N)
            nm = p[:, :, cols].sum(-1).mean(-1)                                          # (Hq,)
            rows = score_rows(N)
            pl = attention_probs(q, k, rows.start, N, scaling)[0] if False else None
            for name, layers in sets.items():
                idx = build_index(q, k, layers[li], 64, 64, last_q=64, scale=scaling)
                for h in range(Hq):
                    km = kept_mask(idx, h, N - tail, N, N)
                    per[name][li][h] = round(float((p[h] * km)[:, cols].sum(-1).mean() / max(float(nm[h]), 1e-9)), 3)
                    qrec[name].append(float((p[h] * km).sum(-1).mean()))
            for h in range(Hq):
                mass[li][h] = round(float(nm[h]), 4)

        with torch.no_grad(), capture_qk(model, on_qk):
            model.model(input_ids=torch.tensor([c.ids]), use_cache=False)
        heads = sorted(((mass[l][h], l, h) for l in range(L) for h in range(Hq)), reverse=True)[:12]
        summ = {}
        for name in sets:
            # mass-weighted share of the needle attention kept, over all heads, and over the top-12 heads
            tot = sum(mass[l][h] for l in range(L) for h in range(Hq))
            kept = sum(mass[l][h] * per[name][l][h] for l in range(L) for h in range(Hq))
            summ[name] = {"needle_mass_kept": round(kept / tot, 3),
                          "top12_retrieval_heads_kept": [per[name][l][h] for _, l, h in heads],
                          "question_rows_recall": round(sum(qrec[name]) / len(qrec[name]), 3)}
        cases_out.append({"task": task, "index": c.index, "needle_cols": cols,
                          "top_retrieval_heads": [[l, h, m] for m, l, h in heads], "sets": summ})
        print(task, c.index, "top heads", [(l, h, m) for m, l, h in heads[:6]], flush=True)
        for name, s in summ.items():
            print(f"   {name:40s} needle mass kept {s['needle_mass_kept']:.3f}  q-rows recall {s['question_rows_recall']:.3f}  top heads {s['top12_retrieval_heads_kept'][:6]}", flush=True)
res["cases"] = cases_out
res["patterns"] = {k: [[list(p.to_list()) if hasattr(p, 'to_list') else [p.name, p.size_1, p.size_2] for p in lay] for lay in v]
                   for k, v in sets.items() if k.startswith("search")}
res["timings"]["total_s"] = time.time() - t0
json.dump(res, open(out_path, "w"), indent=1)
print("wrote", out_path, f"{time.time() - t0:.0f}s")
