"""clone_or_copy: the same bytes either way, and it reports which way it went."""

import errno
import os

import pytest

from mlx_mixlora import clone


def test_clone_or_copy_gives_identical_bytes_and_metadata(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(1 << 20) + b"tail")
    os.utime(src, (1_000_000_000, 1_000_000_000))
    mode = clone.clone_or_copy(src, tmp_path / "b.bin")
    assert mode in ("clone", "copy")
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert int((tmp_path / "b.bin").stat().st_mtime) == 1_000_000_000


def failing_ficlone(monkeypatch, code: int, message: str) -> None:
    """Make the Linux clone ioctl fail with `code`."""
    import fcntl

    def ioctl(fd, request, arg):
        raise OSError(code, message)

    monkeypatch.setattr(clone.sys, "platform", "linux")
    monkeypatch.setattr(fcntl, "ioctl", ioctl)


def test_unsupported_clone_falls_back_to_a_full_copy(tmp_path, monkeypatch):
    failing_ficlone(monkeypatch, errno.EOPNOTSUPP, "not supported")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 5000)
    assert clone.clone_or_copy(src, tmp_path / "b.bin") == "copy"
    assert (tmp_path / "b.bin").read_bytes() == b"x" * 5000


def test_a_real_io_error_is_not_hidden_by_the_fallback(tmp_path, monkeypatch):
    failing_ficlone(monkeypatch, errno.EIO, "I/O error")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x")
    with pytest.raises(OSError, match="I/O error"):
        clone.clone_or_copy(src, tmp_path / "b.bin")
