"""``accel pack inspect|export``: look inside an acceleration pack, or export its patterns.

A pack is input from anywhere: every value taken from it is printed through ``printable`` (control
characters such as terminal escape sequences escaped; rich markup is off on the consoles) and numbers
are formatted defensively.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import err, out, printable, user_errors


def _num(v, spec: str = ".3f") -> str:
    """A number from the pack's free-form provenance, or the value itself when it is not one."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return printable(v)

app = typer.Typer(help="Inspect or export an acceleration pack.", no_args_is_help=True)


@app.command("inspect")
def inspect(pack: Path = typer.Argument(..., help="The pack (.safetensors).")):
    """Print a pack's metadata, per-layer pattern counts and heads."""
    with user_errors():
        from ..runtime.pack import load_pack

        p = load_pack(pack)
        meta = Table(title=f"pack {printable(pack)}", show_header=False)
        meta.add_row("base model", printable(p.base_model))
        meta.add_row("fingerprint", printable(p.fingerprint))
        meta.add_row("format version", printable(p.format_version))
        meta.add_row("drafter", printable(p.drafter_kind or "none"))
        meta.add_row("size", f"{pack.stat().st_size / 1e6:.2f} MB")
        prov = p.provenance or {}
        for k in ("accel_version", "date"):
            if k in prov:
                meta.add_row(k, printable(prov[k]))
        for k, v in (prov.get("commands") or {}).items():
            meta.add_row(f"command ({printable(k)})", printable(v))
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
                out.print("patterns info: " + printable(json.dumps(p.patterns_info, default=str)))
        else:
            out.print("patterns: none")
        if p.has_drafter and p.drafter_kind == "medusa":
            m = p.drafter
            t = Table(title="drafter: medusa heads")
            for col in ("heads", "ResBlocks", "projection", "hidden", "vocab", "tree nodes", "tensors", "params"):
                t.add_column(col, justify="right")
            n_params = sum(v.numel() for v in p.heads.values())
            t.add_row(str(m["num_heads"]), str(m["num_layers"]), printable(m.get("projection", "shared")), str(m["hidden_size"]),
                      str(m["vocab_size"]), str(len(m.get("tree") or [])), str(len(p.heads)), f"{n_params / 1e6:.2f} M")
            out.print(t)
            th = prov.get("train_heads")
            metrics = (th.get("metrics") if isinstance(th, dict) else None) or {}
            top1 = metrics.get("top1") if isinstance(metrics, dict) else None
            top5 = metrics.get("top5") if isinstance(metrics, dict) else None
            if isinstance(top1, list) and top1:
                acc = Table(title="held-out accuracy per head")
                for col in ("head", "predicts", "top-1", "top-5"):
                    acc.add_column(col, justify="right")
                top5 = top5 if isinstance(top5, list) else []
                for i, t1 in enumerate(top1[:64]):
                    acc.add_row(str(i), f"t+{i + 2}", _num(t1), _num(top5[i]) if i < len(top5) else "-")
                out.print(acc)
        else:
            out.print(f"drafter: {p.drafter_kind}" if p.has_drafter else "heads: none (drafter: none)")


@app.command("export")
def export(
    pack: Path = typer.Argument(..., help="The pack (.safetensors)."),
    format: str = typer.Option("minference", "--format", help="'minference' (best-pattern JSON) or 'eagle3' (the pack's EAGLE draft in the SGLang / vLLM layout, a folder)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the JSON config (minference) or the folder (eagle3)."),
    model: Optional[str] = typer.Option(None, "--model", help="eagle3 only: the base model (its lm_head goes into the export)."),
):
    """Export the pack's patterns as MInference's best-pattern config (read by vLLM and SGLang too), or its
    EAGLE draft in the EAGLE-3 layout SGLang and vLLM load."""
    with user_errors():
        from ..runtime.errors import AccelError
        from ..runtime.files import check_output
        from ..runtime.pack import export_minference, load_pack

        if format == "eagle3":
            path = _export_eagle3(load_pack(pack), pack, output, model)
            err.print(f"wrote {printable(path)}/ (EAGLE-3 layout for SGLang / vLLM)")
            return
        if format != "minference":
            raise AccelError(f"unknown --format {format!r}: use 'minference' or 'eagle3'")
        check_output(output, inputs=[pack], what="--output")  # never the pack itself, never a FIFO, ...
        path = export_minference(load_pack(pack), output, inputs=[pack])
        err.print(f"wrote {printable(path)}")


def _export_eagle3(p, pack_path, output, model):
    from ..runtime.drafters.eagle import EagleConfig, EagleDraft
    from ..runtime.drafters.eagle_io import export_eagle3
    from ..runtime.errors import AccelError
    from ..runtime.models import load_model
    from ..runtime.pack import validate_for_model

    if p.drafter_kind != "eagle" or not p.has_drafter:
        raise AccelError(f"{pack_path} holds no EAGLE drafter (drafter: {p.drafter_kind or 'none'}); "
                         "train one with `accel train-heads --drafter eagle --pack`")
    if model is None:
        raise AccelError("--format eagle3 needs --model (the base model: its lm_head is part of the EAGLE-3 layout)")
    lm = load_model(model, device="cpu")
    validate_for_model(p, lm.model, lm.fingerprint, where=f"pack {pack_path}")
    draft = EagleDraft(EagleConfig.from_dict({k: v for k, v in p.drafter.items() if k != "tree"}))
    draft.load_state_dict(p.tensors, strict=True)
    return export_eagle3(draft, output, lm_head_weight=lm.model.get_output_embeddings().weight,
                         base_config=lm.model.config)
