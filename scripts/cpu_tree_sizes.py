"""Medusa on the CPU: tokens/s of plain decoding vs Medusa with candidate trees of several sizes
(built from the shipped pack's measured rank acceptance), fp32, default model, held-out prompts.
The last line is JSON.

  .venv/bin/python scripts/cpu_tree_sizes.py --out results/cpu-tree-sizes.json
"""
import argparse
import json

import torch

from accel.bench.decode import heldout_prompts
from accel.bench.common import environment, write_json
from accel.runtime.decode import generate_plain
from accel.runtime.drafters.medusa import MedusaDrafter
from accel.runtime.generate import default_pack_path
from accel.runtime.model import CompactLM
from accel.runtime.medusa import generate_medusa
from accel.runtime.models import load_model
from accel.runtime.pack import load_pack
from accel.runtime.tree import build_tree


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--sizes", default="3,7,15,31,63")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    lm = load_model("smollm2-135m", device="cpu")
    tok = lm.tokenizer
    cm = CompactLM.from_hf(lm.model)
    pack = load_pack(default_pack_path())
    heads, _ = MedusaDrafter.load_heads(pack, cm)
    prompts = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for p in heldout_prompts()[:args.prompts]]
    eos = lm.eos_ids
    rows = []
    n = s = 0
    plain = []
    for p in prompts:
        [r] = generate_plain(cm, [p], args.new, eos_ids=eos)
        plain.append(r.tokens)
        n, s = n + r.num_new, s + r.decode_s
    base = n / s
    rows.append({"engine": "plain", "tokens_per_s": base})
    print(f"plain: {base:.1f} tok/s", flush=True)
    for size in [int(x) for x in args.sizes.split(",")]:
        tree = build_tree(pack.medusa["rank_acceptance"], num_nodes=size)
        n = s = 0
        acc, same = [], 0
        for p, ref in zip(prompts, plain):
            m = generate_medusa(cm, heads, p, args.new, tree=tree, eos_ids=eos)
            n, s = n + m.num_new, s + m.decode_s
            acc += m.accept_lengths
            same += m.tokens == ref
        row = {"engine": f"medusa, {size}-node tree", "tokens_per_s": n / s, "speedup": n / s / base,
               "mean_accepted": sum(acc) / len(acc), "identical": f"{same}/{len(prompts)}"}
        rows.append(row)
        print(row, flush=True)
    out = {"env": environment("python scripts/cpu_tree_sizes.py"), "prompts": len(prompts), "new_tokens": args.new, "rows": rows}
    if args.out:
        write_json(args.out, out)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
