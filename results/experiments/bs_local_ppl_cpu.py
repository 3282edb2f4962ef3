"""Does block-sparse lose perplexity for want of a local window?  (CPU, Qwen2.5-Coder-0.5B, the book, 16K.)

scripts/gpu/qwen_ppl_probe.py (results/experiments/qwen-ppl-probe-h200.json) found the shipped pack's 25
block-sparse heads cost most of its book perplexity (+11.2 % at 16K; +0.5 % with them and the A-shape heads
dense, +11.1 % with only the A-shape heads dense).  Vertical-slash always keeps the 100 nearest diagonals;
block-sparse forces only the diagonal block, so a row at a block's start may keep almost no recent keys.
This runs the same book text at N tokens on the CPU (fp32, reference kernels) three ways: dense, the pack,
and the pack with block-sparse also forcing the key blocks overlapping the LOCAL rows before each query
block (monkeypatched `kernels.index._block_masks`; same top-k, so the same cost).

    python results/experiments/bs_local_ppl_cpu.py --n 16384 --local 64 --json out.json
"""
import argparse
import json
import math
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--local", type=int, default=64)
    ap.add_argument("--pack", default="results/qwen2.5-coder-0.5b-patterns-h200.safetensors")
    ap.add_argument("--variants", default="dense,pack,pack+local")
    ap.add_argument("--bs-only", action="store_true", help="only the block-sparse heads run sparse")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    import sys
    from accel.bench.quality import forced_plan, token_nll
    from accel.bench.ruler_run import natural_ids
    from accel.kernels import index as kidx
    from accel.runtime.model import CompactLM
    from accel.runtime.models import load_model
    from accel.runtime.pack import load_pack
    from accel.runtime.prefill import layer_patterns

    torch.set_num_threads(2)
    t0 = time.time()
    lm = load_model("qwen2.5-coder-0.5b", device="cpu", dtype="fp32")
    compact, tok = CompactLM.from_hf(lm.model), lm.tokenizer
    print(f"loaded in {time.time() - t0:.0f} s on {compact.device}", flush=True)
    pats = layer_patterns(load_pack(a.pack), a.n)
    if a.bs_only:   # only the block-sparse heads sparse (others dense), layers without one dense: ~4x faster
        from accel.kernels import HeadPattern
        pats = [[p if p.name == "block_sparse" else HeadPattern("dense") for p in layer]
                if any(p.name == "block_sparse" for p in layer) else None for layer in pats]
    ids = natural_ids(tok, a.n, 0, source="book")[: a.n]
    x = torch.tensor([ids], device=compact.device)
    orig = kidx._block_masks

    def local_masks(N, block_m, block_n, device):
        allowed, forced = orig(N, block_m, block_n, device)
        r0, _ = kidx._q_block_bounds(N, block_m, device)
        kb = torch.arange(allowed.shape[1], device=device)
        return allowed, forced | (allowed & ((kb[None, :] * block_n + block_n - 1) >= (r0 - a.local)[:, None]))

    from accel.bench.common import environment
    out = {"env": environment("python results/experiments/bs_local_ppl_cpu.py " + " ".join(sys.argv[1:])), "n": a.n, "local": a.local, "pack": a.pack, "text": "book", "bs_only": a.bs_only, "rows": {}}
    dense = None
    for v in a.variants.split(","):
        kidx._block_masks = local_masks if v.endswith("+local") else orig
        kidx._CONST_CACHE.clear()
        t = time.time()
        nll = token_nll(compact, x, forced_plan(None if v == "dense" else pats))
        out["rows"][v] = {"ppl": math.exp(nll.mean()), "seconds": time.time() - t}
        if v == "dense":
            dense = nll
        elif dense is not None:
            out["rows"][v]["ratio"] = math.exp(nll.mean() - dense.mean())
        print(v, out["rows"][v], flush=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
