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

from accel.runtime.errors import AccelError

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
    return " ".join(["accel"] + sys.argv[1:])
