"""Mean accepted tokens per Medusa step on held-out chat prompts, for one or more packs.

Runs the real pipeline (``Generator``: compact engine, greedy) with Medusa and without, checks that
the outputs are identical, and reports accepted length, tokens/s and the pack's size, so projection
kinds can be compared by accepted length per byte of pack.

  python scripts/eval_acceptance.py --model smollm2-135m --prompts heads/heldout_prompts.jsonl \
      --out results/acceptance.json pack-shared.safetensors pack-own.safetensors
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from accel.bench.common import environment, write_json
from accel.runtime.generate import GenerationConfig, Generator
from accel.runtime.models import load_model
from accel.runtime.pack import load_pack, validate_for_model
from accel.runtime.prompts import read_prompt_file


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("packs", nargs="+")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default="heads/heldout_prompts.jsonl")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default=None, help="bf16 | fp32 (default: bf16 on CUDA)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    lm = load_model(args.model, dtype=args.dtype)
    prompts = read_prompt_file(args.prompts)
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, medusa=True)
    plain = Generator(lm, None, cfg)
    plain.run(prompts[:1])  # warm-up (graph capture)
    base = plain.run(prompts)
    rows = []
    for path in args.packs:
        pack = load_pack(path)
        validate_for_model(pack, lm.model, lm.fingerprint, where=path)
        gen = Generator(lm, pack, cfg)
        gen.run(prompts[:1])
        res = gen.run(prompts)
        acc = [c.stats.get("accepted_per_step", 0.0) for c in res]
        steps = [c.stats.get("steps", 0) for c in res]
        new = [c.num_new_tokens for c in res]
        row = dict(pack=path, bytes=Path(path).stat().st_size, projection=pack.medusa["projection"],
                   num_heads=pack.medusa["num_heads"], tree_nodes=len(pack.medusa.get("tree") or []),
                   mean_accepted=sum(new) / max(sum(steps), 1),  # tokens per verify step over all prompts
                   mean_accepted_per_prompt=statistics.mean(acc),
                   identical_to_plain=sum(a.tokens == b.tokens for a, b in zip(res, base)), prompts=len(res),
                   medusa_tok_s=statistics.median(c.stats["tokens_per_s"] for c in res),
                   plain_tok_s=statistics.median(c.stats["tokens_per_s"] for c in base),
                   top1=(pack.provenance.get("train_heads") or {}).get("metrics", {}).get("top1"))
        row["speedup"] = row["medusa_tok_s"] / row["plain_tok_s"]
        row["accepted_per_mb"] = row["mean_accepted"] / (row["bytes"] / 1e6)
        rows.append(row)
        print(f"{path}: accepted {row['mean_accepted']:.2f}/step, identical {row['identical_to_plain']}/{row['prompts']}, "
              f"medusa {row['medusa_tok_s']:.0f} tok/s vs plain {row['plain_tok_s']:.0f} tok/s, {row['bytes'] / 1e6:.1f} MB",
              flush=True)
    env = environment(" ".join(["python scripts/eval_acceptance.py"] + (argv or sys.argv[1:])))
    write_json(args.out, {"env": env, "model": lm.name, "dtype": str(lm.model.dtype), "prompts": args.prompts,
                          "max_new_tokens": args.max_new_tokens, "rows": rows})


if __name__ == "__main__":
    main()
