"""runtime/files.py: the one atomic write -- checks up front, mode kept, temp files never left, one-line OS errors.

Tests run as root on the CI machine, so "read-only" and "disk full" are simulated by making the OS call
fail with the real errno (root ignores permission bits; a read-only mount needs privileges we lack).
"""

import errno
import os
import stat

import pytest

from accel.runtime import files
from accel.runtime.errors import AccelError
from accel.runtime.files import AtomicFile, WriteError, atomic_write, check_output


def _names(d):
    return sorted(p.name for p in d.iterdir())


def test_atomic_write_replaces_and_keeps_mode(tmp_path):
    f = tmp_path / "out.json"
    f.write_text("old")
    os.chmod(f, 0o640)
    atomic_write(f, "new")
    assert f.read_text() == "new"
    assert stat.S_IMODE(f.stat().st_mode) == 0o640  # mkstemp's 0600 must not leak through
    assert _names(tmp_path) == ["out.json"]


def test_new_file_gets_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "n.txt", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "n.txt").stat().st_mode) == 0o644


def test_writer_callable_and_failure_removes_temp(tmp_path):
    f = tmp_path / "p.bin"
    f.write_bytes(b"precious")

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError):
        atomic_write(f, boom)
    assert f.read_bytes() == b"precious" and _names(tmp_path) == ["p.bin"]
    atomic_write(f, lambda tmp: tmp.write_bytes(b"whole"))
    assert f.read_bytes() == b"whole"


def test_keyboard_interrupt_removes_temp(tmp_path):
    f = tmp_path / "o.jsonl"
    f.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with AtomicFile(f) as af:
            af.write("partial")
            raise KeyboardInterrupt
    assert f.read_text() == "old\n" and _names(tmp_path) == ["o.jsonl"]


@pytest.mark.parametrize("err,text", [(errno.ENOSPC, "no space left on device"),
                                      (errno.EROFS, "read-only file system"),
                                      (errno.EACCES, "permission denied")])
def test_os_errors_become_one_line(tmp_path, monkeypatch, err, text):
    f = tmp_path / "o.txt"
    f.write_text("old")

    def failing_fsync(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(WriteError) as e:
        atomic_write(f, "new")
    assert str(e.value) == f"cannot write {f}: {text}" and isinstance(e.value, AccelError)
    assert f.read_text() == "old" and _names(tmp_path) == ["o.txt"]


def test_unwritable_folder_fails_at_check_time(tmp_path, monkeypatch):
    real = files.tempfile.mkstemp

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(files.tempfile, "mkstemp", ro)
    with pytest.raises(WriteError, match="read-only file system"):
        check_output(tmp_path / "x.jsonl")
    monkeypatch.setattr(files.tempfile, "mkstemp", real)
    assert check_output(tmp_path / "x.jsonl") == tmp_path / "x.jsonl"
    assert _names(tmp_path) == []  # the probe file is gone


def test_refuses_input_folder_and_missing_folder(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("data")
    with pytest.raises(WriteError, match="is the input file"):
        check_output(inp, inputs=[str(inp)])
    os.link(inp, tmp_path / "hard.jsonl")  # the same file under another name
    with pytest.raises(WriteError, match="is the input file"):
        check_output(tmp_path / "hard.jsonl", inputs=[inp])
    with pytest.raises(WriteError, match="is a folder"):
        check_output(tmp_path)
    with pytest.raises(WriteError, match="does not exist: create it first"):
        check_output(tmp_path / "nope" / "x.json")
    assert check_output(tmp_path / "new" / "x.json", create_parents=True).parent.is_dir()
    assert inp.read_text() == "data"


def test_refuses_fifo_and_device(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match="FIFO"):
        atomic_write(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(WriteError, match="character device"):
        check_output("/dev/null")


def test_symlinks_are_written_through(tmp_path):
    real = tmp_path / "data" / "out.jsonl"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "out.jsonl"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    # a link to an input is the input
    inp = tmp_path / "in.txt"
    inp.write_text("in")
    (tmp_path / "alias").symlink_to(inp)
    with pytest.raises(WriteError, match="is the input file"):
        check_output(tmp_path / "alias", inputs=[inp])
    # a link to a FIFO is refused, and stays
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to_fifo").symlink_to(tmp_path / "fifo")
    with pytest.raises(WriteError, match="FIFO"):
        check_output(tmp_path / "to_fifo")


def test_owner_kept_and_long_names(tmp_path):
    f = tmp_path / "o.txt"
    f.write_text("old")
    if os.getuid() == 0:
        os.chown(f, 1234, 5678)
    atomic_write(f, "new")
    if os.getuid() == 0:
        assert (f.stat().st_uid, f.stat().st_gid) == (1234, 5678)
    long = tmp_path / ("n" * 250)
    atomic_write(long, "x")
    assert long.read_text() == "x" and _names(tmp_path) == sorted(["o.txt", "n" * 250])
