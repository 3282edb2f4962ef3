"""Medusa tree size vs speed on the GPU, with the exact (batch-invariant) decode path.

Trees of several sizes are built from the shipped pack's measured rank acceptances (``build_tree``);
each decodes the held-out chat prompts greedily. Reports mean accepted tokens per step, tokens/s,
and the ratio to plain exact decoding timed in the same run; every Medusa output is checked against
plain greedy.

  python scripts/tree_sweep.py --sizes 15 31 63 127 255 --out results/tree-sweep-h200.json
"""
from __future__ import annotations

import argparse
import json
import sys

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[15, 31, 63, 127, 255])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--pack", help="pack with the heads (default: the shipped one)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    env = environment(" ".join(["scripts/tree_sweep.py"] + (argv or sys.argv[1:])))
    lm = load_model("smollm2-135m", device="cuda", dtype="bf16")
    tok = lm.tokenizer
    prompts = [tok(tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)["input_ids"] for p in heldout_prompts()[: args.prompts]]
    cm = CompactLM.from_hf(lm.model)
    cm.setup_cache(1, max(map(len, prompts)) + args.max_new_tokens + 1024)
    pack = load_pack(args.pack or default_pack_path())
    heads, _ = MedusaDrafter.load_heads(pack, cm)
    acc = json.loads(pack.medusa["rank_acceptance"]) if isinstance(pack.medusa["rank_acceptance"], str) \
        else pack.medusa["rank_acceptance"]
    eos = tuple(lm.eos_ids)
    with torch.no_grad():
        generate_plain(cm, [prompts[0]], 8, compile="exact")
        plain = [generate_plain(cm, [p], args.max_new_tokens, compile="exact", eos_ids=eos)[0] for p in prompts]
        plain_tps = sum(r.num_new for r in plain) / sum(r.decode_s for r in plain)
        print(f"plain exact: {plain_tps:.0f} tok/s", flush=True)
        rows = []
        for n in args.sizes:
            tree = build_tree(acc, n)
            generate_medusa(cm, heads, prompts[0], 16, tree=tree, compile="exact", eos_ids=eos)  # capture
            res = [generate_medusa(cm, heads, p, args.max_new_tokens, tree=tree, compile="exact", eos_ids=eos)
                   for p in prompts]
            steps = [a for r in res for a in r.accept_lengths]
            tps = sum(r.num_new for r in res) / sum(r.decode_s for r in res)
            row = dict(nodes=n, depth=max(map(len, tree)), mean_accepted=sum(steps) / len(steps), tokens_per_s=tps,
                       step_ms=1e3 * sum(r.decode_s for r in res) / len(steps), speedup_vs_plain=tps / plain_tps,
                       identical_to_plain=f"{sum(r.tokens == q.tokens for r, q in zip(res, plain))}/{len(prompts)}")
            rows.append(row)
            print(row, flush=True)
    write_json(args.out, {**env, "model": "smollm2-135m", "pack": args.pack or "shipped", "dtype": "bf16", "plain_exact_tokens_per_s": plain_tps,
                          "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "rows": rows})


if __name__ == "__main__":
    main()
