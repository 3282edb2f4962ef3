"""``accel pack inspect|export``: look inside an acceleration pack, or export its patterns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer
from rich.table import Table

from .common import err, out, user_errors

app = typer.Typer(help="Inspect or export an acceleration pack.", no_args_is_help=True)


@app.command("inspect")
def inspect(pack: Path = typer.Argument(..., help="The pack (.safetensors).")):
    """Print a pack's metadata, per-layer pattern counts and heads."""
    with user_errors():
        from ..runtime.pack import load_pack

        p = load_pack(pack)
        meta = Table(title=f"pack {pack}", show_header=False)
        meta.add_row("base model", p.base_model)
        meta.add_row("fingerprint", p.fingerprint)
        meta.add_row("format version", str(p.format_version))
        meta.add_row("drafter", p.drafter_kind or "none")
        meta.add_row("size", f"{pack.stat().st_size / 1e6:.2f} MB")
        prov = p.provenance or {}
        for k in ("accel_version", "date"):
            if k in prov:
                meta.add_row(k, str(prov[k]))
        for k, v in (prov.get("commands") or {}).items():
            meta.add_row(f"command ({k})", str(v))
        out.print(meta)
        if p.patterns:
            from ..kernels import PATTERNS

            t = Table(title="patterns per layer")
            for col in ("layer", *PATTERNS, "mean score"):
                t.add_column(col, justify="right")
            for li, layer in enumerate(p.patterns):
                c = Counter(v[0] for v in layer.values())
                scores = [float(v[3]) for v in layer.values() if len(v) > 3]
                t.add_row(str(li), *(str(c.get(n, 0)) for n in PATTERNS),
                          f"{sum(scores) / max(len(scores), 1):.3f}")
            out.print(t)
            if p.patterns_info:
                out.print("patterns info: " + json.dumps(p.patterns_info, default=str), markup=False)
        else:
            out.print("patterns: none")
        if p.has_drafter and p.drafter_kind == "medusa":
            m = p.drafter
            t = Table(title="drafter: medusa heads")
            for col in ("heads", "ResBlocks", "projection", "hidden", "vocab", "tree nodes", "tensors", "params"):
                t.add_column(col, justify="right")
            n_params = sum(v.numel() for v in p.heads.values())
            t.add_row(str(m["num_heads"]), str(m["num_layers"]), m.get("projection", "shared"), str(m["hidden_size"]),
                      str(m["vocab_size"]), str(len(m.get("tree") or [])), str(len(p.heads)), f"{n_params / 1e6:.2f} M")
            out.print(t)
            metrics = (prov.get("train_heads") or {}).get("metrics") or {}
            if metrics.get("top1"):
                acc = Table(title="held-out accuracy per head")
                for col in ("head", "predicts", "top-1", "top-5"):
                    acc.add_column(col, justify="right")
                for i, (t1, t5) in enumerate(zip(metrics["top1"], metrics.get("top5", []))):
                    acc.add_row(str(i), f"t+{i + 2}", f"{t1:.3f}", f"{t5:.3f}")
                out.print(acc)
        else:
            out.print(f"drafter: {p.drafter_kind}" if p.has_drafter else "heads: none (drafter: none)")


@app.command("export")
def export(
    pack: Path = typer.Argument(..., help="The pack (.safetensors)."),
    format: str = typer.Option("minference", "--format", help="Only 'minference' (best-pattern JSON) for now."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the JSON config."),
):
    """Export the pack's patterns as MInference's best-pattern config (read by vLLM and SGLang too)."""
    with user_errors():
        from ..runtime.errors import AccelError
        from ..runtime.pack import export_minference, load_pack

        if format != "minference":
            raise AccelError(f"unknown --format {format!r}: only 'minference' is supported")
        path = export_minference(load_pack(pack), output)
        err.print(f"wrote {path}")
