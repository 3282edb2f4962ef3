"""Plain vs Medusa vs EAGLE decoding, one command: speed from request start, acceptance, exactness.

On held-out chat prompts (heads/heldout_prompts.jsonl, disjoint from the drafters' training prompts),
batch 1, greedy, the engine's default decode mode (``exact`` on CUDA: every step a CUDA graph, captured
once and reused across requests; ``eager`` on a CPU), for each engine:
- ``tokens_per_s``: decode only (the engine's own count: prefill and capture excluded);
- ``wall_tokens_per_s``: new tokens over the time from request start to its last token (prefill, set-up,
  any capture included: what a user feels), and the speed-ups vs plain computed from it;
- ``mean_accept``: tokens emitted per verify step (root included: 1.0 = no draft token accepted);
- ``identical``: prompts whose tokens equal plain greedy's (must be all of them);
- ``step_ms`` (decode time per step) and ``step_cost`` (that over plain's step time): what acceptance
  must beat.
Engines: plain; Medusa from the shipped default pack (or ``--medusa-pack``) when it fits the model;
EAGLE from ``--pack`` (a pack whose drafter is EAGLE, ``accel train-heads --drafter eagle --pack``) or a
draft file (``--draft``), for each ``--tree top_k,depth,num_nodes`` (default: the pack's tree). One warm-up
request per engine first (it captures the step; its capture time is reported as ``first_capture_s``).

  python -m accel.bench.eagle --pack eagle.pack.safetensors --prompts 12 --max-new-tokens 256 \\
      --tree 8,5,48 --tree 10,6,60 --json results/eagle-bench.json

Prints a table; the last stdout line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..runtime.model import CompactLM
from .common import environment, write_json
from .decode import heldout_prompts

__all__ = ["run_eagle_bench", "main"]


def _now(dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _is_pack(path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "accel.format_version" in (f.metadata() or {})
    except Exception:
        return False


def _eagle_source(path, cm, lm, dev, dt):
    """-> (EagleDrafter with the file's tree or defaults, description). A pack or a draft file."""
    from ..runtime.drafters.eagle_drafter import EagleDrafter
    from ..runtime.errors import AccelError

    if _is_pack(path):
        from ..runtime.pack import load_pack, validate_for_model

        pk = load_pack(path)
        if pk.drafter_kind != "eagle" or not pk.has_drafter:
            raise AccelError(f"{path} holds no EAGLE drafter (kind {pk.drafter_kind!r}); train one with "
                             "`accel train-heads --drafter eagle --pack`")
        validate_for_model(pk, lm.model, lm.fingerprint, where=f"pack {path}")
        return EagleDrafter.from_pack(pk, cm), dict(pk.provenance.get("train_heads", {})).get("metrics")
    from ..runtime.drafters.eagle_io import load_eagle

    draft, meta = load_eagle(path, device=dev, dtype=dt)
    if meta.get("fingerprint") and meta["fingerprint"] != lm.fingerprint:
        raise AccelError(f"{path} was trained for another model (fingerprint {meta['fingerprint']})")
    draft.attach_base(cm.tok_embeddings, cm.output.weight)
    return EagleDrafter(draft.eval()), meta.get("provenance", {}).get("train_heads", {}).get("metrics")


def _medusa(cm, lm, medusa_pack):
    """The Medusa drafter of ``medusa_pack`` ('default': the shipped pack) if it fits, else None."""
    from ..runtime.drafters.medusa import MedusaDrafter
    from ..runtime.errors import AccelError
    from ..runtime.generate import default_pack_path
    from ..runtime.pack import load_pack, validate_for_model

    path = default_pack_path() if medusa_pack == "default" else medusa_pack
    if not path:
        return None, "no pack"
    pk = load_pack(path)
    if pk.drafter_kind != "medusa" or not pk.has_drafter:
        return None, f"{path}: no Medusa heads"
    try:
        validate_for_model(pk, lm.model, lm.fingerprint, where=f"pack {path}")
    except AccelError as e:
        return None, str(e)
    return MedusaDrafter.from_pack(pk, cm), str(path)


def _run(engine, prompts, max_new_tokens, eos, dev, ref=None):
    from ..runtime.engine import Sampling

    warm = engine.generate([prompts[0]], Sampling(min(16, max_new_tokens), eos_ids=eos))[0]  # captures
    n = dec = wall = 0.0
    steps, same, acc, toks, by_prompt = 0, 0, [], [], []
    for i, p in enumerate(prompts):
        t0 = _now(dev)
        r = engine.generate([p], Sampling(max_new_tokens, eos_ids=eos))[0]
        wall += _now(dev) - t0  # request start to last token: prefill, set-up and any capture included
        n, dec = n + r.num_new, dec + r.decode_s
        toks.append(r.tokens)
        if r.accept_lengths:
            acc += r.accept_lengths
            by_prompt.append(round(sum(r.accept_lengths) / len(r.accept_lengths), 3))
        steps += len(r.accept_lengths) if r.accept_lengths else r.num_new
        same += ref is not None and r.tokens == ref[i]
    row = dict(tokens_per_s=round(n / dec, 1), wall_tokens_per_s=round(n / wall, 1),
               step_ms=round(1e3 * dec / max(steps, 1), 4), overhead_ms_per_request=round(1e3 * (wall - dec) / len(prompts), 2),
               first_capture_s=round(warm.capture_s, 3), new_tokens=int(n))
    if acc:
        row.update(mean_accept=round(sum(acc) / len(acc), 3), accept_by_prompt=by_prompt)
    if ref is not None:
        row["identical"] = f"{same}/{len(prompts)}"
    return row, toks


@torch.no_grad()
def run_eagle_bench(model: str, eagle_path: str, num_prompts: int, max_new_tokens: int, trees=None, device=None,
                    dtype=None, step_cost: float | None = None, log=print, medusa_pack: str | None = "default",
                    mode=None, command: str = "python -m accel.bench.eagle") -> dict:
    """-> {"rows": [plain, medusa?, eagle per tree], "trees": the EAGLE rows, ...}. ``step_cost``: a given
    draft+verify step cost in plain steps for ``projected_speedup`` (the measured one is ``step_cost``)."""
    from ..runtime.drafters.eagle_drafter import EagleDrafter
    from ..runtime.engine import Engine
    from ..runtime.models import load_model, pick_device, pick_dtype

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    lm = load_model(model, device=str(dev), dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, "fp32"))
    cm = CompactLM.from_hf(lm.model)
    base, metrics = _eagle_source(eagle_path, cm, lm, dev, dt)
    trees = trees or [(base.top_k, base.depth, base.num_nodes)]
    tok = lm.tokenizer
    prompts = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for p in heldout_prompts()[:num_prompts]]
    eos = tuple(lm.eos_ids)
    # one cache for every request: growing it between requests would drop the captured steps
    cm.setup_cache(1, max(map(len, prompts)) + max_new_tokens + 512)

    plain_eng = Engine(cm, None, mode=mode)
    plain, ref = _run(plain_eng, prompts, max_new_tokens, eos, dev)
    plain = dict(engine=f"plain ({plain_eng.mode})", **plain)
    rows = [plain]
    log(f"plain {plain_eng.mode}: {plain['tokens_per_s']} tok/s, wall {plain['wall_tokens_per_s']} tok/s")

    def finish(row):
        row["step_cost"] = round(row["step_ms"] / plain["step_ms"], 3)
        row["speedup_vs_plain"] = round(row["tokens_per_s"] / plain["tokens_per_s"], 3)
        row["wall_speedup_vs_plain"] = round(row["wall_tokens_per_s"] / plain["wall_tokens_per_s"], 3)
        if step_cost and "mean_accept" in row:
            row["projected_speedup"] = round(row["mean_accept"] / step_cost, 3)
        rows.append(row)
        log(f"{row['engine']}: {row['tokens_per_s']} tok/s, wall {row['wall_tokens_per_s']} tok/s "
            f"({row['wall_speedup_vs_plain']}x), {row.get('mean_accept', 1.0)} tok/step, identical {row['identical']}")
        return row

    medusa_note = "skipped"
    if medusa_pack:
        md, medusa_note = _medusa(cm, lm, medusa_pack)
        if md is not None:
            eng = Engine(cm, md, mode=mode)
            r, _ = _run(eng, prompts, max_new_tokens, eos, dev, ref)
            finish(dict(engine=f"medusa ({eng.mode})", tree_nodes=md.tree.num_nodes - 1, **r))
    eagle_rows, errors = [], []
    for k, depth, nodes in trees:
        dr = EagleDrafter(base.draft, top_k=k, depth=depth, num_nodes=nodes)
        eng = Engine(cm, dr, mode=mode)
        name = f"eagle ({eng.mode}) k={k} depth={depth} nodes={dr.num_nodes}"
        try:
            r, _ = _run(eng, prompts, max_new_tokens, eos, dev, ref)
        except Exception as e:  # keep the other rows of a one-shot GPU run; the JSON says what failed
            import traceback

            errors.append(dict(engine=name, error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc().splitlines()[-12:]))
            log(f"{name}: FAILED {type(e).__name__}: {e}")
            continue
        row = finish(dict(engine=name, top_k=k, depth=depth, num_nodes=dr.num_nodes, **r))
        eagle_rows.append(row)
    return dict(model=lm.name, eagle=str(eagle_path), medusa=medusa_note, device=str(dev),
                device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", dtype=str(dt),
                mode=plain_eng.mode, prompts=len(prompts), max_new_tokens=max_new_tokens,
                plain_tok_s=plain["tokens_per_s"], rows=rows, trees=eagle_rows, errors=errors, draft_metrics=metrics,
                environment=environment(command))


def table(out: dict) -> str:
    head = f"{'engine':44} {'tok/s':>8} {'wall tok/s':>10} {'x plain':>7} {'tok/step':>8} {'step ms':>8} {'same':>6}"
    lines = [head, "-" * len(head)]
    for r in out["rows"]:
        lines.append(f"{r['engine'][:44]:44} {r['tokens_per_s']:>8} {r['wall_tokens_per_s']:>10} "
                     f"{r.get('wall_speedup_vs_plain', 1.0):>7} {r.get('mean_accept', 1.0):>8} {r['step_ms']:>8.3f} "
                     f"{r.get('identical', '-'):>6}")
    return "\n".join(lines)


def main(argv=None):
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pack", help="pack whose drafter is EAGLE (`accel train-heads --drafter eagle --pack`)")
    src.add_argument("--draft", help="EAGLE draft file (`accel train-heads --drafter eagle` without --pack)")
    ap.add_argument("--medusa-pack", default="default", help="Medusa pack to compare with ('default': the shipped "
                                                             "pack; 'none': skip)")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--tree", action="append", default=None,
                    help="top_k,depth,num_nodes (repeatable); default: the pack's tree")
    ap.add_argument("--mode", default=None, help="decode mode (default: exact on CUDA, eager on a CPU)")
    ap.add_argument("--step-cost", type=float, default=None, help="draft+verify step time in plain steps")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    trees = [tuple(int(x) for x in t.split(",")) for t in a.tree] if a.tree else None
    cmd = "python -m accel.bench.eagle " + " ".join(argv if argv is not None else sys.argv[1:])
    out = run_eagle_bench(a.model, a.pack or a.draft, a.prompts, a.max_new_tokens, trees, a.device, a.dtype,
                          a.step_cost, medusa_pack=None if a.medusa_pack == "none" else a.medusa_pack,
                          mode=a.mode, command=cmd)
    if a.json:
        write_json(a.json, out)
    print(table(out))
    print(json.dumps({k: v for k, v in out.items() if k != "environment"}))


if __name__ == "__main__":
    main()
