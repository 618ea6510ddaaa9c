"""The store's journal ring: where a measurement becomes crash-safe, with one ``memcpy``.

The serving path must not wait for the store's real work (writing the arrays into the
segment files of ``labd.store.segments`` and a metadata row into SQLite). ``Store.record``
copies the measurement into this file instead, through a shared memory mapping, and returns;
the writer thread ingests the records, and whoever opens the store next after a crash replays
what the crashed process had not ingested. Bytes copied into a shared mapping of a file are in
the operating system's page cache: they survive the death of the process (``kill -9``
included) but not power loss or an OS crash, the same guarantee as SQLite's WAL with
``synchronous = NORMAL``; with ``fsync=True`` each record is also ``msync``-ed
(``synchronous = "full"``).

Why a mapping and a ring: the ring's pages are touched once and then reused, so after the
first lap a record costs a ``memcpy`` into mapped, already dirty page-cache pages (~60 us for
512 KiB here), against ~90 us for a ``pwritev`` over cached pages and ~150 us for one into
fresh ones (measured after the thread slept a millisecond, as the serving thread does between
requests: 150 and 170 us). The copy holds the GIL and never blocks, so the serving thread
does not queue behind the writer thread for the GIL afterwards.

File layout: one 4096-byte header page (``b"LABDRNG1"``, u64 *size* S, u64 *base*), then a
data area of S bytes. Records are addressed by a *logical* position L that only grows; a
record at L lies at data offset ``(L - base) % S``, never across the end of the area (a record
that would is preceded by a skip mark, or by nothing when fewer than a head's bytes are left,
and starts at the next lap)::

    b"LRR1", u64 L, u32 meta bytes, u64 x, theta, y bytes     (head)
    meta (UTF-8 JSON object), x, theta, y                      (raw float32)
    b"LRE1", u64 L, u64 record length                          (commit mark)

    b"LRS1", u64 L, u32 0, u64 0, 0, 0                         (skip to the next lap)

The commit mark is copied last. A record cut short by a crash lacks it and is ignored (its
reply never left, since the reply is sent after ``append`` returns); so is anything left of an
earlier lap, whose head and mark name another position. The database stores the logical
position up to which it has ingested, in the same transaction as the rows, so replay starts
exactly after the last ingested record and never re-ingests one (exactly once). A writer may
overwrite only what was ingested: ``append`` is told the ingested position and refuses
(``RingFull``) a record that would overwrite more.

A record larger than the area makes the ring grow (``grow``), which is allowed only when
everything is ingested: a new size and a new base (the current position) in the header, so no
old record is read at a new place.

A measurement whose theta equals one recently recorded for the same system carries no theta
(0 bytes) and instead names, in its metadata, the measurement that carried it
(``"theta_seq": seq``; ``labd.store.writer`` explains why it can always be found).

The file is locked (``flock``) by its one writer: ``Ring.open`` raises ``RingBusy`` when
another live process holds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
MADV_POPULATE_WRITE = 23  # Linux 5.14


class RingBusy(Exception):
    """Another live process holds the ring (it writes this store)."""


class RingFull(Exception):
    """The record would overwrite records not yet ingested."""


@dataclass(slots=True)
class Entry:
    """One complete record: its metadata, arrays (views of the mapping) and end position."""

    meta: dict[str, Any]
    x: memoryview
    theta: memoryview
    y: memoryview
    end: int


def ring_path(store: Path) -> Path:
    """The journal ring of the store file ``store``."""
    return store.with_name(store.name + ".labd-ring")


def populate(m: mmap.mmap, start: int) -> None:
    """Fault in the pages of ``m`` from ``start`` on for writing (``MADV_POPULATE_WRITE``,
    ~75 ms for 64 MiB here, the GIL released; touching every page where the kernel lacks
    it): a first write to a page of a shared file mapping costs a page fault, ~1 us per 4 KiB
    page, i.e. ~600 us per 512 KiB record, ten times the copy itself."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        anchor = ctypes.c_char.from_buffer(m, start)
        try:
            if libc.madvise(ctypes.c_void_p(ctypes.addressof(anchor)),
                            ctypes.c_size_t(len(m) - start), MADV_POPULATE_WRITE) == 0:
                return
        finally:
            del anchor
    except (OSError, AttributeError, ValueError):
        pass
    for page in range(start, len(m), mmap.PAGESIZE):
        m[page] = m[page]


def record_bytes(meta_bytes: int, nx: int, nt: int, ny: int) -> int:
    return HEAD.size + meta_bytes + nx + nt + ny + TRAILER.size


class Ring:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._map: mmap.mmap | None = None
        self.size = 0
        self.base = 0
        head = os.pread(fd, FILE_HEADER.size, 0)
        if len(head) == FILE_HEADER.size:
            magic, size, base = FILE_HEADER.unpack(head)
            if magic == FILE_MAGIC and size > 0 and os.fstat(fd).st_size >= DATA + size:
                self.size, self.base = int(size), int(base)
                self._map = mmap.mmap(fd, DATA + self.size)
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        #: Write position (logical): set by ``start``.
        self.end = self.base

    @classmethod
    def open(cls, path: Path) -> Ring:
        """Open (creating if needed) and lock the ring; ``RingBusy`` if already locked."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RingBusy(f"{path} is locked by another process writing this store") from None
        try:
            return cls(path, fd)
        except BaseException:
            os.close(fd)
            raise

    @property
    def valid(self) -> bool:
        """Whether the file has a ring (a new or damaged file has none: ``grow`` makes one)."""
        return self._map is not None

    def grow(self, position: int, need: int = 0, fsync: bool = False) -> None:
        """Start an empty ring at logical ``position``, its data area at least ``RING_BYTES``
        and twice ``need`` bytes: only when everything before ``position`` is ingested
        (nothing is left to replay). The pages are faulted in at once (``populate``), so that
        appends copy into mapped pages."""
        size = max(RING_BYTES, self.size)
        while size < 2 * need:
            size *= 2
        self._view.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        # Older records stay where they are: their heads and marks name positions before
        # ``position``, so they are stale from here on (never truncate: a view of the old
        # mapping may still exist, and pages beyond the end of a file raise SIGBUS).
        os.pwrite(self._fd, FILE_HEADER.pack(FILE_MAGIC, size, position), 0)
        if os.fstat(self._fd).st_size < DATA + size:
            os.ftruncate(self._fd, DATA + size)
        if fsync:
            os.fdatasync(self._fd)
        self.size, self.base, self.end = size, position, position
        self._map = mmap.mmap(self._fd, DATA + size)
        self._view = memoryview(self._map)
        populate(self._map, DATA)

    def _at(self, position: int) -> int:
        return DATA + (position - self.base) % self.size

    def append(self, body: bytes, x: memoryview, theta: memoryview, y: memoryview,
               ingested: int, fsync: bool = False
               ) -> tuple[int, tuple[memoryview, memoryview, memoryview]]:
        """Copy one record (``body``: its metadata, a UTF-8 JSON object) at the write
        position; return the position after it and views of the copies of ``x``, ``theta``
        and ``y`` in the ring (valid until the record is ingested and the ring moves on).
        Raises ``RingFull`` when it would overwrite records after ``ingested`` (nothing
        written)."""
        nx, nt, ny = x.nbytes, theta.nbytes, y.nbytes
        length = record_bytes(len(body), nx, nt, ny)
        at = self.end
        room = self.size - (at - self.base) % self.size  # bytes left in this lap
        start = at if length <= room else at + room
        if length > self.size or start + length - ingested > self.size:
            raise RingFull(f"{length} bytes at {at}, ingested up to {ingested}")
        m = self._map
        assert m is not None
        skip = -1
        if start != at and room >= HEAD.size:
            skip = self._at(at)
            m[skip:skip + HEAD.size] = HEAD.pack(SKIP_MAGIC, at, 0, 0, 0, 0)
        p = first = self._at(start)
        m[p:p + HEAD.size] = HEAD.pack(HEAD_MAGIC, start, len(body), nx, nt, ny)
        p += HEAD.size
        m[p:p + len(body)] = body
        p += len(body)
        copies = self._view
        a, b, c = p, p + nx, p + nx + nt
        for part in (x, theta, y):
            n = part.nbytes
            if n:
                m[p:p + n] = part
                p += n
        m[p:p + TRAILER.size] = TRAILER.pack(TRAILER_MAGIC, start, length)
        if fsync:
            for lo, hi in ((skip, skip + HEAD.size), (first, p + TRAILER.size)):
                if lo >= 0:
                    page = lo & ~(mmap.PAGESIZE - 1)
                    m.flush(page, hi - page)
        self.end = start + length
        return self.end, (copies[a:b], copies[b:c], copies[c:c + ny])

    def entries(self, start: int) -> Iterator[Entry]:
        """The complete records from logical position ``start`` on, stopping at a torn or
        stale one; ``end`` is then where the next record goes."""
        m = self._map
        self.end = start
        if m is None:
            return
        at = start
        while True:
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
            length = record_bytes(n_meta, nx, nt, ny)
            if magic != HEAD_MAGIC or length > room:
                return
            mark, logical, recorded = TRAILER.unpack_from(m, p + length - TRAILER.size)
            if mark != TRAILER_MAGIC or logical != at or recorded != length:
                return
            view = memoryview(m)[p + HEAD.size:p + length - TRAILER.size]
            a, b, c = n_meta, n_meta + nx, n_meta + nx + nt
            at += length
            self.end = at
            yield Entry(json.loads(bytes(view[:a])), view[a:b], view[b:c], view[c:c + ny], at)

    def close(self) -> None:
        """Release the mapping, the lock and the file."""
        self._view.release()
        if self._map is not None:
            with contextlib.suppress(BufferError):  # an Entry's view is alive: GC unmaps it
                self._map.close()
            self._map = None
        os.close(self._fd)
