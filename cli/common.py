"""Shared CLI plumbing: consoles, the one-line error contract, and option parsing helpers.

Every command body runs inside ``user_errors()``: an ``AccelError`` (or a bad-parameter ``ValueError``
from the library) becomes one line on stderr and exit code 2; an OS error the one-line fact with its
path ("x.jsonl: permission denied"); out-of-memory one line with the way out; anything else is a bug and
still prints one line (plus "rerun with --debug"). ``--debug`` or ``ACCEL_DEBUG=1`` lets the traceback
through. Python warnings (e.g. ``--force``) become one "warning:" line each. Click's usage errors
(``-n 0``, an unknown option) are one line too: ``OneLineGroup`` is the root command's class.

Everything printed is plain text: both consoles have rich markup and emoji codes off, so a file name
like ``[bold]x.txt`` or pack metadata holding ``[link=...]`` prints as written; ``printable`` escapes
control characters (terminal escape sequences, bidi overrides, line separators) in text that came from
a file or the user.
"""

from __future__ import annotations

import contextlib
import os
import sys
import unicodedata
import warnings

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from ..runtime.errors import AccelError

# markup/emoji off: text from files and users must never be interpreted ("[/]x.txt", ":x:", "[link=...]")
out = Console(highlight=False, soft_wrap=True, markup=False, emoji=False)  # results (stdout)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)  # progress, tables, messages

GENERATE_OOM_HINT = "use shorter prompts (or --truncate left), a lower --max-new-tokens, or fewer prompts per file"
TRAIN_OOM_HINT = "lower --batch-size, --seq-len or --max-new-tokens, or use a bigger GPU"

# Bidirectional overrides/isolates reorder what a terminal shows ("Trojan Source"); escape them too.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def printable(text: object) -> str:
    """``text`` with control characters written as escapes (\\x1b, \\u2028...), safe for a terminal and one line."""
    s = str(text)
    if s.isprintable():
        return s
    outp = []
    for ch in s:
        if ch.isprintable() or (ch == " "):
            outp.append(ch)
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            outp.append(ascii(ch)[1:-1])  # '\x1b', '\u2028'
        else:  # other separators (e.g. U+00A0): show as is
            outp.append(ch)
    return "".join(outp)


_state = {"debug": False}


def set_debug(flag: bool) -> None:
    _state["debug"] = flag


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("ACCEL_DEBUG", "") not in ("", "0")


def say(label: str, message: str, style: str = "bold red") -> None:
    """One line on stderr: a styled label, then ``message`` as plain text (control characters escaped)."""
    err.print(Text.assemble((label, style), " ", printable(message)), highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2):
    say("error:", message)
    raise typer.Exit(code)


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    say("warning:", str(message), "bold yellow")


@contextlib.contextmanager
def user_errors(oom_hint: str = TRAIN_OOM_HINT):
    """Run a command body under the one-line contract (see the module docstring).

    ``oom_hint``: what the user should change when the GPU (or host) runs out of memory."""
    if debug_enabled():
        yield
        return
    with warnings.catch_warnings():
        warnings.showwarning = _warn_one_line  # restored by catch_warnings
        try:
            yield
        except typer.Exit:
            raise
        except AccelError as e:  # our own messages are one line by design; printable() escapes any stray \n
            fail(_noted(str(e).strip() or type(e).__name__, e), e.exit_code)
        except KeyboardInterrupt as e:
            fail(_noted("interrupted", e), 130)
        except MemoryError as e:
            fail(_noted(f"out of memory: {oom_hint}", e), 3)
        except Exception as e:  # noqa: BLE001 - the contract is: never a traceback without --debug
            if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower():
                fail(_noted(f"out of memory: {oom_hint}", e), 3)
            if isinstance(e, OSError) and e.strerror:
                fail(_noted(os_error_line(e), e))
            if isinstance(e, (ValueError, FileNotFoundError, PermissionError, IsADirectoryError)):
                fail(_noted(one_line(e), e))
            fail(_noted(f"internal error ({type(e).__name__}: {one_line(e)}); rerun with --debug for the "
                        "traceback", e), 1)


def _noted(message: str, e: BaseException) -> str:
    """The message plus the notes a command attached on the way out (e.g. how many results were kept)."""
    notes = [str(n) for n in getattr(e, "__notes__", ()) if str(n).strip()]
    return "; ".join([message] + notes)


def os_error_line(e: OSError) -> str:
    """'x.jsonl: permission denied' -- the fact and the path, without Python's [Errno N] decoration."""
    reason = e.strerror[:1].lower() + e.strerror[1:]
    return f"{e.filename}: {reason}" if e.filename else reason


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class OneLineGroup(TyperGroup):
    """The root command: click's usage errors ("-n: 0 is not in the range x>=1", unknown options) become
    one "error:" line plus the --help hint on the same line, instead of click's multi-line box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from typer._click import exceptions as cx
        from typer.exceptions import Abort

        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as e:  # `accel` / `accel pack` alone: show the help, as before
            from typer import rich_utils

            rich_utils.rich_format_error(e)
            sys.exit(e.exit_code)
        except cx.ClickException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            say("error:", " ".join(e.format_message().split()) + hint)
            sys.exit(e.exit_code)
        except Abort:
            say("error:", "interrupted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


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
        return " ".join(["accel"] + [_portable(a) for a in sys.argv[1:]])
    parts = ctx.command_path.split()
    parts[0] = "accel"
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            parts.append(shlex.quote(_portable(value)))
        elif getattr(param, "is_flag", False) and isinstance(value, bool):
            flags = param.opts if value else (param.secondary_opts or param.opts)
            parts.append(flags[0])
        else:
            parts += [param.opts[0], shlex.quote(_portable(value))]
    return " ".join(parts)


def _portable(value) -> str:
    """A path as it may be recorded in a pack's provenance: relative to the working folder when inside it,
    else only its file name -- a pack must not carry the folders of the machine that built it."""
    text = str(value)
    if not (text.startswith(("/", "~")) and len(text) > 1):
        return text
    p = os.path.abspath(os.path.expanduser(text))
    try:
        rel = os.path.relpath(p, os.getcwd())
    except ValueError:  # another drive (Windows)
        rel = os.pardir
    return rel if not rel.startswith(os.pardir) else os.path.basename(p.rstrip("/")) or text
