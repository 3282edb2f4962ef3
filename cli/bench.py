"""``accel bench``: speed and fidelity (filled in by issue 7)."""

import typer

from .common import fail

app = typer.Typer(help="Measure speed and fidelity: prefill | decode | quality | kernels.", no_args_is_help=True)


@app.command("prefill")
def prefill():
    """Time to first token, dense vs sparse."""
    fail("bench prefill is not implemented yet")
