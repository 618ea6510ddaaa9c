"""The journal of schema version 3 stores, kept to replay what a crashed older labd left in it.

Since schema version 4 the store journals into a ring (``labd.store.ring``); ``Store`` replays a
version 3 journal it finds after upgrading the file, then deletes it (``labd.store.writer``).
This module's format is frozen; below, its original description.

The store's journal: where a measurement becomes crash-safe in one system call.

The serving path must not wait for an SQLite commit (a transaction of three blobs, index pages
and a WAL append costs milliseconds at 256 KiB arrays). Instead ``Store.record`` appends the
measurement to this file with one ``os.writev`` and returns; the writer thread ingests journal
entries into SQLite in groups, and whoever opens the store next after a crash replays what the
crashed process had not ingested. A ``writev`` that returned has put the bytes in the operating
system's page cache: they survive the death of the process (``kill -9`` included) but not power
loss or an OS crash, the same guarantee as SQLite's WAL with ``synchronous = NORMAL``; with
``fsync=True`` each append is also ``fdatasync``-ed (``synchronous = "full"``).

File layout: a 16-byte header (``b"LABDJNL1"``, u64 *epoch*), then records::

    b"LJR1", u64 epoch, u32 meta bytes, u64 x, theta, y bytes    (head)
    meta (UTF-8 JSON object), x, theta, y                         (raw float32)
    b"LJE1", u64 epoch, u64 record length                         (commit mark)

A measurement whose theta equals one recently journaled for the same system carries no theta
(0 bytes) and instead names, in its metadata, the measurement that carried it
(``"theta_seq": seq``): earlier in the journal or already ingested, never pruned before this
record is ingested (``labd.store.writer``: the fence), so ingestion and replay find it by
``seq``. A record without ``theta_seq`` carries its theta (possibly 0 bytes long).

A record cut short by a crash during the write lacks its commit mark and is ignored (its reply
never left, since the reply is sent after the append returns). When everything in the file is
ingested the writer *rewinds* it: a new epoch in the header, and the next records overwrite the
old ones from the start. The file is not truncated, because writing over pages the page cache
already holds costs less than half of appending fresh ones (115 against 295 us for 768 KiB
here). Records of an older epoch, and a new record torn over an old one, are recognised by the
epochs in their head and commit mark. The database stores ``(epoch, offset)`` of what it has
ingested in the same transaction as the rows, so replay starts exactly after the last ingested
record and never re-ingests one (exactly once).

The file is locked (``flock``) by its one writer: ``Journal.open`` raises ``JournalBusy`` when
another live process holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<8sQ")
FILE_MAGIC = b"LABDJNL1"
HEAD = struct.Struct("<4sQIQQQ")
HEAD_MAGIC = b"LJR1"
TRAILER = struct.Struct("<4sQQ")
TRAILER_MAGIC = b"LJE1"


class JournalBusy(Exception):
    """Another live process holds the journal (it writes this store)."""


@dataclass(slots=True)
class Entry:
    """One complete journal record: its metadata, arrays (raw bytes) and end offset."""

    meta: dict[str, Any]
    x: bytes
    theta: bytes
    y: bytes
    end: int


def journal_path(store: Path) -> Path:
    """The journal file of the store file ``store``."""
    return store.with_name(store.name + ".labd-journal")  # not "-journal": SQLite's own name


class Journal:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.epoch = self._read_epoch()
        #: Write position: the end of the current epoch's records (after ``reset``).
        self.end = FILE_HEADER.size

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating if needed) and lock the journal; ``JournalBusy`` if already locked."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalBusy(f"{path} is locked by another process writing this store") \
                from None
        return cls(path, fd)

    def _read_epoch(self) -> int:
        head = os.pread(self._fd, FILE_HEADER.size, 0)
        if len(head) < FILE_HEADER.size:
            return -1
        magic, epoch = FILE_HEADER.unpack(head)
        return int(epoch) if magic == FILE_MAGIC else -1

    def reset(self, epoch: int, fsync: bool = False) -> int:
        """Start epoch ``epoch`` from the top of the file (older records become stale); return
        the offset of the first record."""
        os.pwrite(self._fd, FILE_HEADER.pack(FILE_MAGIC, epoch), 0)
        if fsync:
            os.fdatasync(self._fd)
        self.end = FILE_HEADER.size
        self.epoch = epoch
        return self.end

    def append(self, meta: dict[str, Any], x: memoryview, theta: memoryview, y: memoryview,
               fsync: bool = False) -> int:
        """Write one record at the end of the current epoch with a single ``pwritev``; return
        the offset after it. Raises ``OSError`` (disk full...); a partial record is then left
        without its commit mark and the next append overwrites it.
        """
        body = json.dumps(meta, separators=(",", ":")).encode()
        length = HEAD.size + len(body) + x.nbytes + theta.nbytes + y.nbytes + TRAILER.size
        parts = [HEAD.pack(HEAD_MAGIC, self.epoch, len(body), x.nbytes, theta.nbytes, y.nbytes),
                 body, x, theta, y, TRAILER.pack(TRAILER_MAGIC, self.epoch, length)]
        written = os.pwritev(self._fd, parts, self.end)
        if written != length:
            raise OSError(f"short write to {self.path}: {written} of {length} bytes")
        if fsync:
            os.fdatasync(self._fd)
        self.end += length
        return self.end

    def entries(self, start: int) -> Iterator[Entry]:
        """The current epoch's complete records from offset ``start`` on, stopping at the end
        of the file, a torn record or a stale one."""
        offset = max(start, FILE_HEADER.size)
        size = os.fstat(self._fd).st_size
        while offset + HEAD.size + TRAILER.size <= size:
            magic, epoch, n_meta, nx, nt, ny = HEAD.unpack(os.pread(self._fd, HEAD.size, offset))
            length = HEAD.size + n_meta + nx + nt + ny + TRAILER.size
            if magic != HEAD_MAGIC or epoch != self.epoch or offset + length > size:
                return
            blob = os.pread(self._fd, length - HEAD.size, offset + HEAD.size)
            mark, epoch, recorded = TRAILER.unpack(blob[-TRAILER.size:])
            if mark != TRAILER_MAGIC or epoch != self.epoch or recorded != length:
                return
            a, b, c = n_meta, n_meta + nx, n_meta + nx + nt
            offset += length
            yield Entry(json.loads(blob[:a]), blob[a:b], blob[b:c], blob[c:c + ny], offset)

    def close(self) -> None:
        """Release the lock and the file."""
        os.close(self._fd)
