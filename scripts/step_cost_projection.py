"""Project speculative decoding's speed-up at a model's shape from one plain step and one speculative
step (verify of N+1 tree tokens, + the drafter's own steps) on random weights (issue 14).

  python scripts/step_cost_projection.py --synthetic llama-3-8b --json results/step-cost-llama3-8b-h200.json

Prints the step costs, the projected speed-up at 2..5 accepted tokens per step and the acceptance
a 2.5x speed-up needs, for Medusa's tree and EAGLE's static (top_k, depth, N) sizes; the library
code is accel.bench.step_cost (its docstring says what is timed).
"""

from __future__ import annotations

import argparse
import sys

from accel.bench.common import environment, write_json
from accel.bench.step_cost import run_step_cost, summary_lines


def _eagle(text: str) -> tuple[int, int, int]:
    try:
        k, d, n = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eagle takes top_k,depth,N (e.g. 8,5,48), got {text!r}") from None
    if not (1 <= k <= 64 and 1 <= d <= 16 and 1 <= n <= 512):
        raise argparse.ArgumentTypeError(f"--eagle {text}: top_k 1..64, depth 1..16, N 1..512")
    return k, d, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", default="llama-3-8b", help="shape from accel.bench.synthetic")
    ap.add_argument("--layers", type=int, help="override the layer count (smoke tests)")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--mode", help="decode mode: exact (CUDA default), graph, eager")
    ap.add_argument("--context", type=int, default=512, help="tokens already in the cache")
    ap.add_argument("--medusa-heads", type=int, default=4)
    ap.add_argument("--medusa-nodes", type=int, default=63)
    ap.add_argument("--eagle", type=_eagle, nargs="+", default=[(8, 5, 48), (10, 6, 60)], metavar="K,D,N")
    ap.add_argument("--accepts", type=float, nargs="+", default=[2, 3, 4, 5])
    ap.add_argument("--target", type=float, default=2.5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    res = run_step_cost(a.synthetic, layers=a.layers, device=a.device, dtype=a.dtype, mode=a.mode,
                        context=a.context, medusa_heads=a.medusa_heads, medusa_nodes=a.medusa_nodes,
                        eagle=tuple(a.eagle), accepts=tuple(a.accepts), target=a.target, reps=a.reps,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    for line in summary_lines(res):
        print(line)
    if a.json:
        cmd = "python scripts/step_cost_projection.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_json(a.json, {"env": environment(cmd), "bench": "step_cost", **res})
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
