"""Files written around the page cache: the same bytes as an ordinary write, whichever way they went."""

import errno
import itertools
import os

import numpy as np
import pytest

from backtest.data import directio
from backtest.data.directio import ALIGN, STAGING_BYTES, write_uncached

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, STAGING_BYTES, 2 * STAGING_BYTES + 12_345]


def payload(size: int) -> bytes:
    return np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()


def writer(data: bytes):
    """Writes ``data`` in three pieces of odd sizes, as bytes (Arrow's small writes) and as Arrow buffers (its
    column data)."""
    import pyarrow as pa

    n = len(data)
    cuts = sorted({0, min(n, n // 3 + 1), min(n, 2 * n // 3 + 2), n})

    def write(sink) -> None:
        for k, (lo, hi) in enumerate(itertools.pairwise(cuts)):
            sink.write(data[lo:hi] if k % 2 else pa.py_buffer(data[lo:hi]))

    return write


@pytest.mark.parametrize("size", SIZES)
def test_the_file_holds_exactly_what_was_written(tmp_path, size) -> None:
    data = payload(size)
    path = tmp_path / "f.bin"
    write_uncached(path, writer(data))
    assert path.read_bytes() == data


def test_direct_where_the_file_system_takes_it(tmp_path) -> None:
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform: every file is written the ordinary way")
    probe = tmp_path / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    data = payload(STAGING_BYTES + 99)
    assert write_uncached(tmp_path / "f.bin", writer(data)) is True
    assert (tmp_path / "f.bin").read_bytes() == data


class _NoDirect:
    """``os`` without O_DIRECT (macOS, Windows)."""

    def __getattr__(self, name: str):
        if name == "O_DIRECT":
            raise AttributeError(name)
        return getattr(os, name)


def test_without_o_direct_the_file_is_written_the_ordinary_way(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(directio, "os", _NoDirect())
    data = payload(ALIGN * 3 + 5)
    assert write_uncached(tmp_path / "f.bin", writer(data)) is False
    assert (tmp_path / "f.bin").read_bytes() == data


@pytest.mark.parametrize("refused", ["open", "write"])
def test_a_file_system_that_refuses_direct_io_gets_an_ordinary_write(tmp_path, monkeypatch, refused) -> None:
    """tmpfs on older kernels refuses the open, some file systems the write itself (EINVAL either way)."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()

    def fake_open(path, flags, mode=0o777):
        if flags & os.O_DIRECT and refused == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags & ~os.O_DIRECT, mode)  # the test's file system may not take O_DIRECT
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    data = payload(STAGING_BYTES + ALIGN + 7)  # refused part-way: the ordinary write starts again
    assert write_uncached(tmp_path / "f.bin", writer(data)) is False
    assert (tmp_path / "f.bin").read_bytes() == data


def test_other_errors_are_raised(tmp_path, monkeypatch) -> None:
    """A full disk is not a reason to try again the ordinary way: the caller (a chunk task) retries."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")

    real_open = os.open

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(
        os, "open", lambda path, flags, mode=0o777: real_open(path, flags & ~os.O_DIRECT, mode)
    )
    with pytest.raises(OSError, match="No space left"):
        write_uncached(tmp_path / "f.bin", writer(payload(ALIGN * 2)))


def test_the_staging_buffers_are_reused(tmp_path) -> None:
    before = directio._staging.qsize()
    for k in range(3):
        write_uncached(tmp_path / f"f{k}.bin", writer(payload(ALIGN + k)))
    assert directio._staging.qsize() <= max(before, 1)
