"""Helpers of scripts/gpu/qwen_longctx.sh (issue 15): the pack's measured sparse threshold, and the table.

  python3 scripts/gpu/qwen_longctx.py threshold PACK SPEED.json CONTEXT   # writes sparse_min_len into PACK
  python3 scripts/gpu/qwen_longctx.py table OUT_DIR                         # the summary, from whatever JSON exists

Break-even: the shortest measured length from which sparse prefill beats dense at that length and at
every longer measured length (`runtime.prefill.sparse_threshold` reads it from the pack's
``patterns_info["sparse_min_len"]``). Never beaten: CONTEXT + 1, so the runtime never picks sparse
for this model (recorded as such, not hidden).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def break_even(rows: list[dict], context: int) -> int:
    """rows: `accel bench prefill` rows (length, speedup = dense_ms / sparse_ms)."""
    rows = sorted(rows, key=lambda r: r["length"])
    best = context + 1
    for r in reversed(rows):
        if r["speedup"] <= 1.0:
            break
        best = r["length"]
    return best


def record_threshold(pack_path: str, speed_json: str, context: int) -> int:
    from accel.runtime.pack import load_pack, save_pack

    rows = json.loads(Path(speed_json).read_text())["rows"]
    n = break_even(rows, context)
    pack = load_pack(pack_path)
    pack.patterns_info = {**pack.patterns_info, "sparse_min_len": n,
                          "sparse_min_len_measured": [{k: r[k] for k in ("length", "dense_ms", "sparse_ms", "speedup")}
                                                      for r in rows]}
    save_pack(pack, pack_path)
    print(f"sparse_min_len = {n}" + (" (sparse never beat dense: above the context)" if n > context else ""))
    return n


def _load(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def table(out: str) -> str:
    out_dir = Path(out)
    lines = []
    t = _load(out_dir / "timings.json") or {}
    if t:
        lines.append("phase seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()))
    sp = _load(out_dir / "speed.json")
    if sp:
        lines.append("prefill (TTFT) ms   length  dense  sparse  speedup  predicted work")
        for r in sp["rows"]:
            lines.append(f"                    {r['length']:6d} {r['dense_ms']:6.1f} {r['sparse_ms']:7.1f} "
                         f"{r['speedup']:7.2f}x {r['predicted_work']:8.3f}")
    for name in ("ruler.json",):
        d = _load(out_dir / name)
        if not d:
            continue
        rows = d.get("rows", [])
        lens = sorted({r["length"] for r in rows})
        tasks = list(dict.fromkeys(r["task"] for r in rows))
        lines.append("RULER score dense/sparse (cases) " + ("[partial]" if d.get("partial") else ""))
        lines.append("task".ljust(16) + "".join(f"{n:>18d}" for n in lens))
        for task in tasks:
            cells = []
            for n in lens:
                r = next((r for r in rows if r["task"] == task and r["length"] == n), None)
                cells.append(f"{r['dense']:5.1f}/{r['sparse']:5.1f} ({r['samples']:2d})".rjust(18) if r else " " * 18)
            lines.append(task.ljust(16) + "".join(cells))
        for a in d.get("averages", []):
            needles = (f"; needles {a['needle_dense']:.1f}/{a['needle_sparse']:.1f}"
                       if a.get("needle_dense") is not None else "")
            lines.append(f"average {a['length']}: dense {a['dense']:.1f} sparse {a['sparse']:.1f}{needles}; "
                         f"worst task delta {a['worst_task_delta']:+.1f}")
        dens = [r["density"] for r in rows if r.get("density") is not None]
        if dens:
            lines.append(f"sparse density (mean over rows) {sum(dens) / len(dens):.3f}")
        for p in d.get("perplexity", []):
            # rows before --ppl-text carry no "text": they are the documentation text
            lines.append(f"perplexity {p.get('text', 'docs')} {p['length']}: dense {p['dense']:.3f} sparse {p['sparse']:.3f} ({100 * (p['ratio'] - 1):+.2f} %)")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "threshold":
        record_threshold(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) >= 2 and sys.argv[1] == "table":
        print(table(sys.argv[2]))
    else:
        sys.exit(__doc__)
