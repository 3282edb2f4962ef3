"""Per-request overhead of plain, Medusa and EAGLE decoding, phase by phase (issue 14), on the real SmolLM2.

    ACCEL_SMOLLM2_GGUF=/root/smollm2.gguf python scripts/gpu/eagle_overhead.py EAGLE_PACK [--prompts 8]
        [--max-new-tokens 256] [--tree 8,5,48] [--medusa-pack runtime/default_pack.safetensors] [--json out.json]
    python scripts/gpu/eagle_overhead.py --tiny        # CPU smoke run: the tests' tiny model, random drafters

Per engine (batch 1, greedy, the engine's default mode: ``exact`` on CUDA): one warm-up request of 16 new
tokens (it captures; the bench's warm-up is the same, and a later request asking more tokens must NOT
capture again), then for each of ``--prompts`` held-out chat prompts:
- an unhooked request: overhead = request wall time (synced) minus its counted decode time (what
  bench/eagle.py reports as overhead_ms_per_request), and whether it captured anything;
- the same request under the phase hook (``runtime.phases``, bench/request_phases.py): a device sync and a
  clock read at each phase mark (setup, get_step, reset, prefill, draft_prefill, first_tree, decode,
  teardown), so each phase's GPU work is charged to it (the syncs add small bubbles).
Then diagnostics of the suspects of EAGLE's extra ~35 ms:
- ``features``: the base prefill with the draft's three feature layers vs without (plain's);
- ``sdpa``: which SDPA backend the draft's attention takes at a prompt-length shape, and the old eager
  draft prefill (one pass over the prompt, as before the fix) at prompt lengths never seen (a new plan per
  shape, if the backend plans: cuDNN) vs the same lengths again; the new chunked pass at both.
Prints one table (ms per request, mean over the prompts) and the diagnostics; ``--json`` writes all of it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _now(dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _load(a):
    """-> (compact model, {name: drafter or None}, prompts, eos ids, device)."""
    from accel.runtime.drafters import EagleDrafter, MedusaDrafter
    from accel.runtime.model import CompactLM

    if a.tiny:
        from accel.bench.request_phases import _tiny_engines

        m, engines = _tiny_engines()
        prompts = [[(7 * i + s) % 97 for i in range(40 + 23 * s)] for s in range(a.prompts)]
        dr = engines["eagle"].drafter
        return m, {"plain": None, "medusa": engines["medusa"].drafter,
                   "eagle": EagleDrafter(dr.draft, *a.tree) if a.tree else dr}, prompts, (), m.device
    from accel.bench.decode import heldout_prompts
    from accel.bench.eagle import _eagle_source, _medusa
    from accel.runtime.models import load_model

    lm = load_model(a.model, device="cuda", dtype="bf16")
    cm = CompactLM.from_hf(lm.model)
    dev = cm.device
    eagle, _ = _eagle_source(a.eagle_pack, cm, lm, dev, cm.dtype)
    if a.tree:
        eagle = EagleDrafter(eagle.draft, *a.tree)
    medusa, note = _medusa(cm, lm, a.medusa_pack)
    if medusa is None:
        print(f"medusa skipped: {note}")
    tok = lm.tokenizer
    prompts = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for p in heldout_prompts()[: a.prompts]]
    drafters = {"plain": None, "medusa": medusa, "eagle": eagle}
    return cm, {k: v for k, v in drafters.items() if k == "plain" or v is not None}, prompts, tuple(lm.eos_ids), dev


def _captures():
    """Count StepGraph constructions (captures) from now on: -> a function giving the count so far."""
    from accel.runtime.steps import StepGraph

    init, n = StepGraph.__init__, [0]

    def counted(self, *x, **k):
        n[0] += 1
        init(self, *x, **k)
    StepGraph.__init__ = counted
    return lambda: n[0]


def run_engines(m, drafters, prompts, eos, dev, max_new):
    from accel.bench.request_phases import PHASES, PhaseTimer, profile_request
    from accel.runtime.engine import Engine, Sampling

    n_caps = _captures()
    rows = {}
    for name, dr in drafters.items():
        eng = Engine(m, dr)
        t0 = _now(dev)
        warm = eng.generate([prompts[0]], Sampling(16, eos_ids=eos))[0]
        warm_s = _now(dev) - t0
        over, caps, prefill, capture, phases, tokens = [], 0, [], [], [], []
        for p in prompts:
            c0 = n_caps()
            t0 = _now(dev)
            r = eng.generate([p], Sampling(max_new, eos_ids=eos))[0]
            wall = _now(dev) - t0
            caps += n_caps() - c0
            over.append(1e3 * (wall - r.decode_s))
            prefill.append(1e3 * r.prefill_s)
            capture.append(1e3 * r.capture_s)
            tokens.append(r.tokens)
            timer = PhaseTimer(dev)
            with torch.no_grad():
                profile_request(eng, p, Sampling(max_new, eos_ids=eos), timer=timer)
            phases.append({ph: 1e3 * timer.times.get(ph, 0.0) for ph in PHASES})
        ph_mean = {ph: statistics.mean(x[ph] for x in phases) for ph in PHASES}
        rows[name] = dict(overhead_ms=statistics.mean(over), overhead_min_ms=min(over), overhead_max_ms=max(over),
                          prefill_s_ms=statistics.mean(prefill), capture_s_ms=statistics.mean(capture),
                          captures_after_warmup=caps, warmup_s=warm_s, warmup_capture_s=warm.capture_s,
                          phases_ms=ph_mean,
                          phases_not_decode_ms=sum(v for k, v in ph_mean.items() if k != "decode"),
                          prompt_lens=[len(p) for p in prompts], tokens=tokens)
    ref = rows["plain"]["tokens"]
    for r in rows.values():
        r["identical_to_plain"] = f"{sum(a == b for a, b in zip(r.pop('tokens'), ref))}/{len(ref)}"
    return rows


def diagnostics(m, eagle, prompts, dev):
    """The suspects of EAGLE's per-request overhead, timed alone (see the module docstring)."""
    from accel.runtime.drafters.eagle_decode import _draft_catch_up
    from accel.runtime.plain import prefill
    from accel.runtime.steps import backend_for, resolve_mode

    backend = backend_for(resolve_mode(None, dev, m))
    out = {}
    p = prompts[-1]

    def timed(fn, reps=5):
        fn()
        t0 = _now(dev)
        for _ in range(reps):
            fn()
        return 1e3 * (_now(dev) - t0) / reps

    with torch.no_grad():
        out["prefill_plain_ms"] = timed(lambda: prefill(m, p, backend))
        out["prefill_features_ms"] = timed(lambda: prefill(m, p, backend, features=eagle.feature_layers))
        # the draft's attention at a prompt-length shape: which SDPA backend takes it
        c = eagle.draft.config
        G, L, S = c.num_attention_heads // c.num_key_value_heads, len(p), eagle.cache.max_len
        q = torch.zeros(1, c.num_key_value_heads, G * L, c.head_dim, device=dev, dtype=eagle.draft.dtype)
        k = torch.zeros(1, c.num_key_value_heads, S, c.head_dim, device=dev, dtype=eagle.draft.dtype)
        mask = torch.ones(1, 1, G * L, S, dtype=torch.bool, device=dev)
        try:
            from torch.nn.attention import SDPBackend

            choice = torch._fused_sdp_choice(q, k, k, mask)
            out["sdpa_backend_draft_prefill"] = SDPBackend(choice).name
        except Exception as e:  # a private API: report rather than fail
            out["sdpa_backend_draft_prefill"] = f"unknown ({type(e).__name__}: {e})"
        if dev.type == "cuda":
            out["cudnn_sdp_enabled"] = torch.backends.cuda.cudnn_sdp_enabled()
            out["cudnn_version"] = torch.backends.cudnn.version()
        # the old eager one-pass draft prefill at lengths never run before, then the same lengths again;
        # the new chunked pass (captured chunks) at the same lengths
        _, feats = prefill(m, p, backend, features=eagle.feature_layers)
        f = eagle._flat(feats[:, 0])  # (L, 3H)
        toks = torch.as_tensor(p, device=dev)
        eagle.reset()
        lens = sorted({max(8, L - 3 - 5 * i) for i in range(6)})
        first, again = [], []
        for rep in (first, again):
            for n in lens:
                eagle.cache.rollback(0)
                t0 = _now(dev)
                _draft_catch_up(eagle.draft, eagle.cache, f[:n], toks[:n])
                rep.append(1e3 * (_now(dev) - t0))
        out["old_eager_draft_prefill_new_len_ms"] = statistics.mean(first)
        out["old_eager_draft_prefill_same_len_ms"] = statistics.mean(again)
        chunked = []
        if eagle._chunk is not None:
            for n in lens:
                eagle.reset()
                t0 = _now(dev)
                eagle._prompt_chunks(feats[:, 0, :n], toks[:n])
                chunked.append(1e3 * (_now(dev) - t0))
            out["new_chunked_draft_prefill_ms"] = statistics.mean(chunked)
        out["lengths"] = lens
        eagle.reset()
    return out


def table(rows) -> str:
    from accel.bench.request_phases import PHASES

    cols = [ph for ph in PHASES if ph != "decode"]
    head = (f"{'engine':8} {'overhead':>9} {'min':>7} {'max':>7} {'captures':>8} {'same':>6} | "
            + " ".join(f"{c[:11]:>11}" for c in cols) + f" {'sum':>7}")
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:8} {r['overhead_ms']:9.2f} {r['overhead_min_ms']:7.2f} {r['overhead_max_ms']:7.2f} "
                     f"{r['captures_after_warmup']:>8} {r['identical_to_plain']:>6} | "
                     + " ".join(f"{r['phases_ms'][c]:11.2f}" for c in cols) + f" {r['phases_not_decode_ms']:7.2f}")
    lines.append("ms per request (mean over the prompts); overhead = request wall - counted decode, unhooked; "
                 "phases: hooked run (device synced at each mark)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eagle_pack", nargs="?", help="a pack whose drafter is EAGLE (or an EAGLE draft file)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--medusa-pack", default="default", help="'default': runtime/default_pack.safetensors")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--tree", default=None, help="top_k,depth,num_nodes (default: the pack's)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tests' tiny random model")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    a.tree = tuple(int(x) for x in a.tree.split(",")) if a.tree else None
    if not a.tiny and not a.eagle_pack:
        ap.error("give an EAGLE pack (or --tiny for a CPU smoke run)")
    if not a.tiny and not torch.cuda.is_available():
        ap.error("needs CUDA (or --tiny)")
    if a.tiny:
        a.max_new_tokens = min(a.max_new_tokens, 24)
        a.prompts = min(a.prompts, 3)
    m, drafters, prompts, eos, dev = _load(a)
    # one cache for every request, as bench/eagle.py sizes it: growing it would drop the captured steps
    m.setup_cache(1, max(map(len, prompts)) + a.max_new_tokens + 512)
    rows = run_engines(m, drafters, prompts, eos, dev, a.max_new_tokens)
    print(table(rows))
    diag = diagnostics(m, drafters["eagle"], prompts, dev) if "eagle" in drafters else {}
    for k, v in diag.items():
        print(f"  {k}: {round(v, 3) if isinstance(v, float) else v}")
    out = dict(model="tiny" if a.tiny else a.model, device=str(dev), eagle=a.eagle_pack,
               device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               torch=torch.__version__, prompts=len(prompts), max_new_tokens=a.max_new_tokens, rows=rows,
               diagnostics=diag)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"} | {
        "overhead_ms": {k: round(r["overhead_ms"], 2) for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
