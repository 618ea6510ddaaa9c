"""The store's file calls, the same on every platform where they can be.

Positioned I/O is ``lseek`` with ``write``/``read`` (one thread per descriptor at a time);
``write_at`` returns once every byte is in the OS page cache, which outlives the process.
``PORTABLE`` (Windows; ``LABD_STORE_PORTABLE=1`` forces it, as the tests do on Linux) does
without what Windows lacks: ``fsync`` for ``fdatasync``, no directory sync (NTFS journals its
metadata), pages touched for ``madvise``. ``lock`` (``flock``; ``msvcrt.locking`` on Windows)
is released by the OS however the process dies; ``Busy`` while another process holds it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from collections.abc import Sequence
from pathlib import Path

PORTABLE = os.name == "nt" or os.environ.get("LABD_STORE_PORTABLE") == "1"
MADV_POPULATE_WRITE = 23  # Linux 5.14


class Busy(Exception):
    pass


def open_fd(path: Path, truncate: bool = False) -> int:
    """Open read-write, created if missing, in binary mode (Windows translates newlines)."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
    return os.open(path, flags | (os.O_TRUNC if truncate else 0), 0o644)


def lock(fd: int, path: Path) -> None:
    try:
        if os.name == "nt":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise Busy(f"{path} is locked by another process writing this store") from None


def write_at(fd: int, parts: Sequence[bytes | memoryview], offset: int) -> None:
    """Write ``parts`` contiguously at ``offset``."""
    os.lseek(fd, offset, os.SEEK_SET)
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:  # a short write goes on after what was written
            view = view[os.write(fd, view):]


def read_at(fd: int, n: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


def sync(fd: int) -> None:
    """Make the file's written bytes durable."""
    (os.fsync if PORTABLE or not hasattr(os, "fdatasync") else os.fdatasync)(fd)


def flush(m: mmap.mmap, fd: int) -> None:
    """Make what was written into a shared mapping of ``fd`` durable (Windows: and the file)."""
    m.flush()
    if PORTABLE:
        os.fsync(fd)


def sync_dir(directory: Path) -> None:
    """Make a directory's new entries durable (not on the portable path)."""
    if not PORTABLE:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def populate(m: mmap.mmap, start: int) -> None:
    """Fault in the pages of ``m`` from ``start`` on for writing (copies then take no fault)."""
    if not PORTABLE and sys.platform == "linux":
        with contextlib.suppress(OSError, ValueError):
            m.madvise(MADV_POPULATE_WRITE, start, len(m) - start)
            return
    for page in range(start, len(m), mmap.PAGESIZE):
        m[page] = m[page]
