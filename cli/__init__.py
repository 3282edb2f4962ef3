"""The ``accel`` command line: one thin module per command (parse -> library -> render)."""

from __future__ import annotations

import typer

from . import bench, generate, pack, search_patterns, train_heads
from .common import OneLineGroup, set_debug

__all__ = ["app", "main"]

app = typer.Typer(
    name="accel",
    cls=OneLineGroup,  # usage errors as one line
    help="Make Hugging Face causal LMs fast at inference: sparse prefill + Medusa heads, in one pack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also ACCEL_DEBUG=1).")):
    set_debug(debug)


app.command("search-patterns")(search_patterns.search_patterns)
app.command("train-heads")(train_heads.train_heads)
app.command("generate")(generate.generate)
app.add_typer(bench.app, name="bench")
app.add_typer(pack.app, name="pack")


def main() -> None:
    app()
