"""The store's journal ring: where a measurement becomes crash-safe, with one ``memcpy``.

``Store.record`` copies each measurement into this file through a shared mapping, i.e. into
the OS page cache, which outlives the process (``kill -9`` too) but not power loss or an OS
crash (``fsync=True`` flushes each record). The writer thread, or the next opening after a
crash, ingests the records. Layout: a 4096-byte header (``b"LABDRNG1"``, u64 *size* S, u64
*base*), then S bytes; a record at logical position L (only growing) lies at data offset
``(L - base) % S``, never across the end (it starts the next lap, after a skip mark)::

    b"LRR1", u64 L, u32 meta bytes, u64 x, theta, y bytes     (head)
    meta (UTF-8 JSON object), x, theta, y                      (raw float32)
    b"LRE1", u64 L, u64 record length                          (commit mark)
    b"LRS1", u64 L, u32 0, u64 0, 0, 0                         (skip mark)

The commit mark is copied last: a record cut short by a crash (its reply never left), or left
of an earlier lap (its marks name another L), is ignored. ``append`` refuses (``RingFull``) to
overwrite what is not ingested, and the database commits the ingested position with the rows:
replay is exactly once. ``grow`` starts an empty, larger ring at the current position once all
is ingested. ``Ring(path)`` locks the file (one writing process; ``files.Busy``).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from labd.store import files

FILE_HEADER = struct.Struct("<8sQQ")
FILE_MAGIC = b"LABDRNG1"
DATA = 4096  # offset of the data area (one page for the header)
HEAD = struct.Struct("<4sQIQQQ")
HEAD_MAGIC = b"LRR1"
SKIP_MAGIC = b"LRS1"
TRAILER = struct.Struct("<4sQQ")
TRAILER_MAGIC = b"LRE1"
#: Data area of a new ring.
RING_BYTES = 64 * 1024 * 1024


class RingFull(Exception):
    """The record would overwrite records not yet ingested."""


class Entry(NamedTuple):
    """One complete record: its metadata, arrays (views of the mapping) and end position."""

    meta: dict[str, Any]
    x: memoryview
    theta: memoryview
    y: memoryview
    end: int


def ring_path(store: Path) -> Path:
    return store.with_name(store.name + ".labd-ring")


class Ring:
    def __init__(self, path: Path) -> None:
        """Open (creating if needed) and lock the ring; ``files.Busy`` if already locked."""
        self._fd = files.open_fd(path)
        self._map: mmap.mmap | None = None
        self.size = self.base = 0
        try:
            files.lock(self._fd, path)
            magic, size, base = FILE_HEADER.unpack(files.read_at(self._fd, FILE_HEADER.size, 0)
                                                   .ljust(FILE_HEADER.size, b"\0"))
            if magic == FILE_MAGIC and size > 0 and os.fstat(self._fd).st_size >= DATA + size:
                self.size, self.base = int(size), int(base)
                self._map = mmap.mmap(self._fd, DATA + self.size)
        except BaseException:
            os.close(self._fd)
            raise
        #: Write position (logical): ``grow`` sets it, ``append`` advances it.
        self.end = self.base

    def grow(self, position: int, need: int = 0, fsync: bool = False) -> None:
        """Start an empty ring at ``position`` (all before it ingested), of at least
        ``RING_BYTES`` and twice ``need`` bytes, its pages faulted in at once."""
        size = max(RING_BYTES, self.size)
        while size < 2 * need:
            size *= 2
        self._unmap()
        # Older records stay where they are: their heads and marks name positions before
        # ``position``, so they are stale from here on (never truncate: a view of the old
        # mapping may still exist, and pages beyond the end of a file raise SIGBUS).
        files.write_at(self._fd, [FILE_HEADER.pack(FILE_MAGIC, size, position)], 0)
        if os.fstat(self._fd).st_size < DATA + size:
            os.ftruncate(self._fd, DATA + size)
        if fsync:
            files.sync(self._fd)
        self.size, self.base, self.end = size, position, position
        self._map = mmap.mmap(self._fd, DATA + size)
        files.populate(self._map, DATA)

    def _at(self, position: int) -> int:
        return DATA + (position - self.base) % self.size

    def append(self, body: bytes, x: memoryview, theta: memoryview, y: memoryview,
               ingested: int, fsync: bool = False) -> int:
        """Copy one record (``body``: its JSON metadata); return the position after it.
        ``RingFull`` (nothing written) if it would overwrite records after ``ingested``."""
        nx, nt, ny = x.nbytes, theta.nbytes, y.nbytes
        length = HEAD.size + len(body) + nx + nt + ny + TRAILER.size
        at = self.end
        room = self.size - (at - self.base) % self.size  # bytes left in this lap
        start = at if length <= room else at + room
        if length > self.size or start + length - ingested > self.size:
            raise RingFull(f"{length} bytes at {at}, ingested up to {ingested}")
        m = self._map
        assert m is not None
        if start != at and room >= HEAD.size:
            m[self._at(at):self._at(at) + HEAD.size] = HEAD.pack(SKIP_MAGIC, at, 0, 0, 0, 0)
        p = self._at(start)
        for part in (HEAD.pack(HEAD_MAGIC, start, len(body), nx, nt, ny), body, x, theta, y,
                     TRAILER.pack(TRAILER_MAGIC, start, length)):  # the commit mark last
            m[p:p + len(part)] = part
            p += len(part)
        if fsync:
            files.flush(m, self._fd)
        self.end = start + length
        return self.end

    def entries(self, start: int, stop: float = math.inf) -> Iterator[Entry]:
        """The complete records from ``start`` on, up to ``stop`` or a torn or stale one."""
        m = self._map
        at = start
        while m is not None and at < stop:
            room = self.size - (at - self.base) % self.size
            if room < HEAD.size:
                at += room
                continue
            p = self._at(at)
            magic, logical, n_meta, nx, nt, ny = HEAD.unpack_from(m, p)
            if logical != at:
                return
            if magic == SKIP_MAGIC:
                at += room
                continue
            length = HEAD.size + n_meta + nx + nt + ny + TRAILER.size
            if magic != HEAD_MAGIC or length > room:
                return
            mark, logical, recorded = TRAILER.unpack_from(m, p + length - TRAILER.size)
            if mark != TRAILER_MAGIC or logical != at or recorded != length:
                return
            view = memoryview(m)[p + HEAD.size:p + length - TRAILER.size]
            a, b, c = n_meta, n_meta + nx, n_meta + nx + nt
            at += length
            yield Entry(json.loads(bytes(view[:a])), view[a:b], view[b:c], view[c:c + ny], at)

    def close(self) -> None:
        """Release the mapping, the lock and the file."""
        self._unmap()
        os.close(self._fd)

    def _unmap(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # an Entry's view is alive: GC unmaps it
                self._map.close()
            self._map = None
