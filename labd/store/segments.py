"""Segment files: the store's arrays, outside SQLite.

Every recorded ``x`` and ``y``, and every distinct ``theta``, is written once into an
append-only *segment* file in the directory ``<store>.labd-blobs/`` (``00000001.seg``,
``00000002.seg``, ...: raw little-endian float32 bytes, no framing). SQLite holds only
metadata and references ``(segment, offset, bytes)``. Compared with blobs in SQLite this saves
three copies of every byte (binding, the WAL append, the checkpoint into the database file)
and the CPU and GIL time they cost.

Contract:

* One thread writes (``SegmentWriter``): the writer thread of the one process that holds the
  store's ring lock (``labd.store.ring``), or whoever recovers or upgrades the store while
  holding it. ``append(parts)`` writes the parts contiguously at the end of the newest segment
  with one ``pwritev`` and returns ``(segment, offset)``; a segment is closed once it holds
  ``limit`` bytes (a part set larger than that gets a segment of its own).
* What SQLite has committed is the truth: the ``segments`` table holds each segment's committed
  size, written in the same transaction as the rows that refer to it. Bytes appended after it
  (a crash between the ``pwritev`` and the commit) are cut off when the store is next opened
  (``SegmentWriter(..., end=committed size)``), and segment files SQLite does not know are
  deleted: they were never referred to.
* ``sync()`` makes appended bytes durable (``fdatasync``; for ``synchronous = "full"``, before
  the transaction that refers to them commits).
* Readers (``SegmentReader``) map segment files read-only and return arrays that share the
  mapping (no copy). A segment is only ever appended to, so a mapping stays valid while the
  store grows; pruning deletes whole segment files (``labd.store.writer``), and a mapping made
  before stays readable (the file lives on until unmapped).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

import numpy as np

#: A segment is closed once it holds this many bytes (pruning with ``max_bytes`` uses smaller
#: ones, see ``labd.store.writer``).
SEGMENT_BYTES = 64 * 1024 * 1024
SUFFIX = ".seg"


def blobs_dir(store: Path) -> Path:
    """The segment directory of the store file ``store``."""
    return store.with_name(store.name + ".labd-blobs")


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:08d}{SUFFIX}"


def segment_files(directory: Path) -> dict[int, Path]:
    """The segment files present, by id."""
    out = {}
    if directory.is_dir():
        for p in directory.iterdir():
            if p.suffix == SUFFIX and p.stem.isdigit():
                out[int(p.stem)] = p
    return out


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    def __init__(self, directory: Path, segment: int, end: int, limit: int = SEGMENT_BYTES,
                 fsync: bool = False) -> None:
        """Append to segment ``segment`` from byte ``end`` on (the file is cut there)."""
        self.directory = directory
        self.limit = limit
        self._fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        self.segment = segment
        path = segment_path(directory, segment)
        self._new_file = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size != end:
            os.ftruncate(self._fd, end)
        self.end = end
        #: Segments appended to since the last ``committed``: id -> size.
        self._sizes: dict[int, int] = {}
        self._dirty = False

    def mark(self) -> tuple[int, int]:
        """The write position, for ``rollback``."""
        return self.segment, self.end

    def rollback(self, mark: tuple[int, int]) -> None:
        """Forget what was appended since ``mark`` (its transaction failed): cut the segment
        back, delete segments begun since."""
        segment, end = mark
        if self.segment != segment:
            os.close(self._fd)
            for s in range(segment + 1, self.segment + 1):
                with contextlib.suppress(FileNotFoundError):
                    segment_path(self.directory, s).unlink()
                self._sizes.pop(s, None)
            self.segment = segment
            self._fd = os.open(segment_path(self.directory, segment), os.O_RDWR, 0o644)
        os.ftruncate(self._fd, end)
        self.end = end
        if segment in self._sizes:
            self._sizes[segment] = end

    def rotate(self) -> None:
        """Close the current segment; the next append starts a new one."""
        if self.end == 0:
            return
        self.sync()
        os.close(self._fd)
        self.segment += 1
        self._fd = os.open(segment_path(self.directory, self.segment),
                           os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.end = 0
        self._sizes[self.segment] = 0
        self._new_file = True

    def append(self, parts: list[memoryview | bytes]) -> tuple[int, int]:
        """Write ``parts`` contiguously; return (segment, offset of the first part)."""
        total = sum(memoryview(p).nbytes for p in parts)
        if self.end and self.end + total > self.limit:
            self.rotate()
        offset = self.end
        written = os.pwritev(self._fd, parts, offset)
        while written < total:  # a short write: go on after what was written
            rest, skip = [], written
            for p in parts:
                n = memoryview(p).nbytes
                if skip >= n:
                    skip -= n
                    continue
                rest.append(memoryview(p).cast("B")[skip:])
                skip = 0
            got = os.pwritev(self._fd, rest, offset + written)
            if got <= 0:
                raise OSError(f"cannot write segment {self.segment}")
            written += got
        self.end += total
        self._sizes[self.segment] = self.end
        self._dirty = True
        return self.segment, offset

    def sizes(self) -> list[tuple[int, int]]:
        """(segment, size) of the segments appended to since ``committed`` was called."""
        return sorted(self._sizes.items())

    def committed(self) -> None:
        """The transaction that stored ``sizes()`` committed."""
        self._sizes.clear()

    def sync(self) -> None:
        """``fdatasync`` what was appended (and the directory, for a new file), if
        ``fsync``."""
        if not self._fsync:
            return
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
        if self._new_file:
            _fsync_dir(self.directory)
            self._new_file = False

    def close(self) -> None:
        self.sync()
        os.close(self._fd)


class SegmentReader:
    """Read-only mappings of a store's segment files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._maps: dict[int, mmap.mmap] = {}

    def _map(self, segment: int, end: int) -> mmap.mmap:
        m = self._maps.get(segment)
        if m is None or len(m) < end:
            path = segment_path(self.directory, segment)
            try:
                with open(path, "rb") as fh:
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except FileNotFoundError:
                raise FileNotFoundError(f"{path} is missing: pruned while being read, or the "
                                        f"store was copied without its {self.directory.name} "
                                        f"directory") from None
            if len(m) < end:
                raise OSError(f"{path} holds {len(m)} bytes; the store refers to {end}")
            self._maps[segment] = m
        return m

    def array(self, segment: int, offset: int, nbytes: int, shape: list[int]) -> np.ndarray:
        """The float32 array at ``offset`` (read-only, sharing the mapping)."""
        if nbytes == 0:
            a = np.zeros(shape, dtype="<f4")
            a.flags.writeable = False
            return a
        m = self._map(segment, offset + nbytes)
        return np.frombuffer(m, dtype="<f4", count=nbytes // 4, offset=offset).reshape(shape)

    def read(self, segment: int, offset: int, nbytes: int) -> bytes:
        """A copy of the bytes at ``offset``."""
        if nbytes == 0:
            return b""
        return self._map(segment, offset + nbytes)[offset:offset + nbytes]

    def close(self) -> None:
        """Drop the mappings (arrays handed out keep theirs alive)."""
        for m in self._maps.values():
            with contextlib.suppress(BufferError):
                m.close()
        self._maps.clear()
