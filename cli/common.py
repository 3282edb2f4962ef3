"""Shared CLI plumbing: consoles, the one-line error contract, and option parsing helpers.

Every command body runs inside ``user_errors()``: an ``AccelError`` (or a bad-parameter ``ValueError``
from the library) becomes one line on stderr and exit code 2; out-of-memory becomes one line with the
way out; anything else is a bug and still prints one line (plus "rerun with --debug"). ``--debug`` or
``ACCEL_DEBUG=1`` lets the traceback through.
"""

from __future__ import annotations

import contextlib
import os
import sys

import typer
from rich.console import Console

from ..runtime.errors import AccelError

out = Console(highlight=False, soft_wrap=True)  # results (stdout)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # progress, tables, messages (stderr)

_state = {"debug": False}


def set_debug(flag: bool) -> None:
    _state["debug"] = flag


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("ACCEL_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 2):
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    if debug_enabled():
        yield
        return
    try:
        yield
    except typer.Exit:
        raise
    except AccelError as e:
        fail(_one_line(e), e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - the contract is: never a traceback without --debug
        if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
            fail("out of memory: lower --batch-size, --seq-len or --max-new-tokens, or use a bigger GPU", 3)
        if isinstance(e, (ValueError, FileNotFoundError, PermissionError, IsADirectoryError)):
            fail(_one_line(e))
        fail(f"internal error ({type(e).__name__}: {_one_line(e)}); rerun with --debug for the traceback", 1)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def parse_length(text: str) -> int:
    """'4k' -> 4096, '32K' -> 32768, '1m' -> 1048576, '3000' -> 3000."""
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise AccelError(f"bad length {text!r}: use a number like 4096, 4k or 128k") from None
    if n <= 0:
        raise AccelError(f"bad length {text!r}: must be positive")
    return n


def command_line() -> str:
    """The running command as a rerunnable line: its path plus every option given on the command line.

    Rebuilt from click's context (not ``sys.argv``) so it is right under test runners and wrappers.
    """
    import shlex

    try:  # newer typer vendors click as typer._click; older ones use click itself
        from typer._click import core
        from typer._click.globals import get_current_context
    except ImportError:
        from click import core
        from click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return " ".join(["accel"] + sys.argv[1:])
    parts = ctx.command_path.split()
    parts[0] = "accel"
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            parts.append(shlex.quote(str(value)))
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            flags = param.opts if value else (param.secondary_opts or param.opts)
            parts.append(flags[0])
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)
