"""EAGLE acceptance benchmark: a trained draft on held-out prompts, greedy, batch 1.

For each held-out chat prompt (heads/heldout_prompts.jsonl, disjoint from the training prompts): plain greedy
tokens (``generate_plain``) and EAGLE tokens (``generate_eagle``, eager), whether they are identical, and the
tokens emitted per verify step (the acceptance length, root included: 1.0 = no draft token accepted), for each
tree setting given. Decoding here is eager (no CUDA graphs yet), so its tokens/s is not the figure the issue
targets; the acceptance length is, and ``projected_speedup`` = acceptance / (step cost in plain steps) once the
engine's graph-captured step cost is measured (pass it as --step-cost).

  python -m accel.bench.eagle --draft eagle.safetensors --prompts 12 --max-new-tokens 256 \\
      --tree 8,5,48 --tree 10,6,64 --json results/eagle-accept.json

The last stdout line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..runtime.decode import generate_plain
from ..runtime.drafters.eagle_decode import generate_eagle
from ..runtime.drafters.eagle_io import load_eagle
from ..runtime.model import CompactLM
from .common import environment, synchronize, write_json
from .decode import heldout_prompts


@torch.no_grad()
def run_eagle_bench(model: str, draft_path: str, num_prompts: int, max_new_tokens: int, trees, device=None,
                    dtype=None, step_cost: float | None = None, log=print) -> dict:
    from ..runtime.models import load_model, pick_device, pick_dtype

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    lm = load_model(model, device=str(dev), dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, "fp32"))
    cm = CompactLM.from_hf(lm.model)
    draft, meta = load_eagle(draft_path, device=dev, dtype=dt)
    if meta.get("fingerprint") and meta["fingerprint"] != lm.fingerprint:
        raise SystemExit(f"{draft_path} was trained for another model (fingerprint {meta['fingerprint']})")
    draft.attach_base(cm.tok_embeddings, cm.output.weight)
    draft.eval()
    tok = lm.tokenizer
    prompts = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for p in heldout_prompts()[:num_prompts]]
    eos = tuple(lm.eos_ids)
    plain, plain_s = [], 0.0
    for p in prompts:
        synchronize(dev)
        t = time.perf_counter()
        r = generate_plain(cm, [p], max_new_tokens, eos_ids=eos)[0]
        synchronize(dev)
        plain_s += time.perf_counter() - t
        plain.append(r.tokens)
    rows = []
    for k, depth, nodes in trees:
        same, acc, n_tok, wall = 0, [], 0, 0.0
        per_prompt = []
        for p, ref in zip(prompts, plain):
            synchronize(dev)
            t = time.perf_counter()
            r = generate_eagle(cm, draft, p, max_new_tokens, top_k=k, depth=depth, num_nodes=nodes, eos_ids=eos)
            synchronize(dev)
            wall += time.perf_counter() - t
            same += r.tokens == ref
            acc += r.accept_lengths
            n_tok += len(r.tokens)
            per_prompt.append(round(sum(r.accept_lengths) / max(1, len(r.accept_lengths)), 3))
        mean_acc = sum(acc) / max(1, len(acc))
        row = dict(top_k=k, depth=depth, num_nodes=nodes, identical=f"{same}/{len(prompts)}",
                   mean_accept=round(mean_acc, 3), accept_by_prompt=per_prompt,
                   eager_tok_s=round(n_tok / wall, 1))
        if step_cost:
            row["projected_speedup"] = round(mean_acc / step_cost, 3)
        rows.append(row)
        log(f"tree k={k} depth={depth} nodes={nodes}: {same}/{len(prompts)} identical, "
            f"{mean_acc:.2f} tokens/step, eager {row['eager_tok_s']} tok/s")
    return dict(model=lm.name, draft=draft_path, device=str(dev), dtype=str(dt), prompts=len(prompts),
                max_new_tokens=max_new_tokens, plain_tok_s=round(sum(map(len, plain)) / plain_s, 1), trees=rows,
                draft_metrics=meta.get("provenance", {}).get("train_heads", {}).get("metrics"),
                environment=environment("python -m accel.bench.eagle"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--draft", required=True, help="EAGLE draft file from `accel train-heads --drafter eagle`")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--tree", action="append", default=None, help="top_k,depth,num_nodes (repeatable); default 8,5,48")
    ap.add_argument("--step-cost", type=float, default=None, help="draft+verify step time in plain steps")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    trees = [tuple(int(x) for x in t.split(",")) for t in (a.tree or ["8,5,48"])]
    out = run_eagle_bench(a.model, a.draft, a.prompts, a.max_new_tokens, trees, a.device, a.dtype, a.step_cost)
    if a.json:
        write_json(a.json, out)
    print(json.dumps({k: v for k, v in out.items() if k != "environment"}))


if __name__ == "__main__":
    main()
