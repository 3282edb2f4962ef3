"""The one way accel writes a file: checked before the work starts, atomic when it happens.

``check_output`` resolves an output path and refuses, in one line, what would lose data or fail late:
a folder, a special file (FIFO, device, socket), a path that is also one of the command's inputs
(compared with ``os.path.samefile``, so hard links and ``./x`` vs ``x`` are caught), a missing or
unwritable folder (probed by creating and removing a temporary file there: ``os.access`` is wrong
for root and on some network file systems).

``AtomicFile`` / ``atomic_write`` then write a temporary file in the target's folder (same file system,
so the rename is atomic), ``fsync`` it, give it the old file's mode (or the umask default for a new
file: ``mkstemp`` would leave 0600), rename it over the target and ``fsync`` the folder. The temporary
file is removed on every failure, ``KeyboardInterrupt`` included. A crash leaves either the old file or
the new one, never half of one.

Symlinks are **written through**: ``out.jsonl -> data/out.jsonl`` replaces ``data/out.jsonl`` and the
link stays a link (what a shell's ``>`` and most editors do); a link to a special file or to an input is
refused like the file itself. OS errors become ``WriteError("cannot write PATH: no space left on device")``.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import AccelError

__all__ = ["WriteError", "check_output", "AtomicFile", "atomic_write"]


class WriteError(AccelError):
    """An output file cannot be written (bad target, read-only file system, full disk, ...)."""


def _reason(e: OSError) -> str:
    """The one-line fact behind an OS error: 'read-only file system', 'no space left on device'."""
    text = e.strerror or (os.strerror(e.errno) if e.errno else "") or type(e).__name__
    return text[:1].lower() + text[1:]


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 what: str = "output", create_parents: bool = False) -> Path:
    """Resolve ``path`` (through symlinks) and make sure writing it later can work and loses nothing.

    ``inputs``: files this command reads; writing over one of them is refused. ``create_parents``:
    create a missing folder (library callers such as checkpoints); otherwise a missing folder is an error.
    Returns the resolved target path.
    """
    given = Path(os.fspath(path)).expanduser()
    if str(given) in ("", "."):
        raise WriteError(f"{what}: empty file name: give a file name like out.jsonl")
    target = Path(os.path.realpath(given))  # symlinks are written through (see the module docstring)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise WriteError(f"cannot write {given}: {_reason(e)}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise WriteError(f"{what} {given} is a folder: give a file name like {given / 'out.jsonl'}")
        for test, kind in _SPECIAL:
            if test(st.st_mode):
                raise WriteError(f"{what} {given} is {kind}, not a regular file: accel writes files "
                                 "atomically (temporary file + rename), so give a regular file's path")
        for inp in inputs:
            if inp is None or str(inp) == "-":
                continue
            try:
                same = os.path.samefile(target, inp)
            except OSError:
                same = False
            if same:
                raise WriteError(f"{what} {given} is the input file {inp}: writing it would destroy the "
                                 "input; choose another output file")
    parent = target.parent
    if not parent.is_dir():
        if parent.exists():
            raise WriteError(f"cannot write {given}: {parent} is not a folder")
        if not create_parents:
            raise WriteError(f"cannot write {given}: folder {parent} does not exist: create it first")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot write {given}: cannot create folder {parent}: {_reason(e)}") from None
    try:  # the real test: can a file be created there right now?
        fd, probe = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WriteError(f"cannot write {given}: {_reason(e)}") from None
    return target


def _tmp_prefix(target: Path) -> str:
    """A hidden name beside the target; cut so that a 255-byte file name still leaves room for the suffix."""
    return f".{target.name[:100]}."


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` on ``commit()`` and vanishes on ``discard()``.

    As a context manager it commits on a clean exit and discards on any exception. ``file`` is the open
    temporary file (text for ``mode="w"``, binary for ``"wb"``); ``tmp_path`` its name, for writers that
    want a path (close ``file`` first). Write errors surface as ``WriteError`` naming ``path``.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", *, encoding: str = "utf-8",
                 inputs: Iterable = (), what: str = "output", create_parents: bool = False):
        if mode not in ("w", "wb"):
            raise ValueError(f"AtomicFile mode must be 'w' or 'wb', got {mode!r}")
        self.given = Path(os.fspath(path))
        self.path = check_output(path, inputs=inputs, what=what, create_parents=create_parents)
        try:
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        except OSError as e:
            raise WriteError(f"cannot write {self.given}: {_reason(e)}") from None
        self.tmp_path = Path(tmp)
        self.file = os.fdopen(fd, mode, **({"encoding": encoding, "newline": ""} if mode == "w" else {}))
        self.state = "open"  # -> "committed" | "discarded"

    def write(self, data) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            self.discard()
            raise WriteError(f"cannot write {self.given}: {_reason(e)}") from None

    def commit(self) -> Path:
        """Flush, fsync, keep the old mode, rename over the target, fsync the folder."""
        if self.state != "open":
            if self.state == "committed":
                return self.given
            raise WriteError(f"cannot write {self.given}: the write was abandoned")
        try:
            if not self.file.closed:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
            else:  # a path-based writer filled it: fsync through a fresh handle
                with open(self.tmp_path, "rb+") as f:
                    os.fsync(f.fileno())
            try:
                old = os.stat(self.path)
            except FileNotFoundError:
                old = None
            os.chmod(self.tmp_path, stat.S_IMODE(old.st_mode) if old else _new_file_mode())
            if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                try:  # keep the owner too where we may (root writing someone else's file)
                    os.chown(self.tmp_path, old.st_uid, old.st_gid)
                except OSError:
                    pass
            os.replace(self.tmp_path, self.path)
            self.state = "committed"
        except OSError as e:
            raise WriteError(f"cannot write {self.given}: {_reason(e)}") from None
        finally:
            self.discard()  # no-op once committed; otherwise the temporary file must not stay behind
        try:  # make the rename itself durable; some file systems cannot fsync a folder
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
        return self.given

    def discard(self) -> None:
        """Drop the temporary file; the target keeps whatever it held before."""
        if self.state != "open":
            return
        self.state = "discarded"
        try:
            self.file.close()
        except OSError:
            pass
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[Path], None], *,
                 inputs: Iterable = (), what: str = "output", create_parents: bool = False) -> Path:
    """Write ``content`` to ``path`` atomically; returns ``path`` (as a ``Path``).

    ``content``: text (UTF-8), bytes, or a function that writes the temporary file given its path
    (e.g. ``lambda p: safetensors.torch.save_file(t, p)``).
    """
    mode = "wb" if isinstance(content, (bytes, bytearray)) else "w"
    af = AtomicFile(path, mode, inputs=inputs, what=what, create_parents=create_parents)
    try:
        if callable(content):
            af.file.close()
            try:
                content(af.tmp_path)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO,
                               errno.EFBIG):
                    raise WriteError(f"cannot write {af.given}: {_reason(e)}") from None
                raise
        else:
            af.write(content)
        return af.commit()
    finally:
        af.discard()  # no-op after a commit
