"""User-facing errors.

Anything the user can fix (a missing file, a bad pack, an unknown model) raises an ``AccelError``
whose message is one line that says what went wrong and how to fix it. The CLI prints exactly that
line and exits non-zero; ``--debug`` / ``ACCEL_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

__all__ = ["AccelError", "PackError", "ModelError", "PromptError"]


class AccelError(Exception):
    """An error the user can fix; ``str(err)`` is the one-line message. Exit code defaults to 2."""

    exit_code = 2


class PackError(AccelError):
    """The acceleration pack is missing, corrupt, or does not fit the model."""


class ModelError(AccelError):
    """The model cannot be found, loaded, or is not supported for what was asked."""


class PromptError(AccelError):
    """The prompt file is missing, empty, not UTF-8, or malformed; or a prompt does not fit."""
