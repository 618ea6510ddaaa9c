"""Segment files: the store's arrays, outside SQLite.

Every recorded ``x`` and ``y``, and every distinct ``theta``, is written once into an
append-only file of ``<store>.labd-blobs/`` (``00000001.seg``, ...: raw little-endian float32);
rows refer to ``(segment, offset, bytes)``, and the ``segments`` table holds each file's
committed size. ``SegmentWriter`` (one thread) appends contiguously to the newest segment and
starts another once one holds ``limit`` bytes; ``rollback`` cuts off what a failed transaction
appended. ``SegmentReader``'s arrays share read-only mappings, valid while the file grows and,
on POSIX, after pruning deletes it (Windows keeps a mapped file until the store next opens).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path

import numpy as np

from labd.store import files

SEGMENT_BYTES = 64 * 1024 * 1024
SUFFIX = ".seg"


def blobs_dir(store: Path) -> Path:
    """The segment directory of the store file ``store``."""
    return store.with_name(store.name + ".labd-blobs")


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:08d}{SUFFIX}"


def segment_files(directory: Path) -> dict[int, Path]:
    """The segment files present, by id."""
    found = directory.iterdir() if directory.is_dir() else ()
    return {int(p.stem): p for p in found if p.suffix == SUFFIX and p.stem.isdigit()}


def delete(path: Path) -> None:
    """Delete a segment file nothing refers to (if the OS lets us: see above)."""
    with contextlib.suppress(OSError):
        path.unlink()


class SegmentWriter:
    def __init__(self, directory: Path, segment: int, end: int, limit: int = SEGMENT_BYTES,
                 fsync: bool = False) -> None:  # appends to ``segment`` from byte ``end`` on
        self.directory = directory
        self.limit = limit
        self._fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        self.segment = segment
        path = segment_path(directory, segment)
        self._new_file = not path.exists()
        self._fd = files.open_fd(path)
        if os.fstat(self._fd).st_size != end:
            os.ftruncate(self._fd, end)
        self.end = end
        self._sizes: dict[int, int] = {}  # appended to since ``committed``: id -> size

    def rollback(self, mark: tuple[int, int]) -> None:
        """Cut off what was appended since ``mark`` (segments begun since are deleted)."""
        segment, end = mark
        if self.segment != segment:
            os.close(self._fd)
            for s in range(segment + 1, self.segment + 1):
                delete(segment_path(self.directory, s))
                self._sizes.pop(s, None)
            self.segment = segment
            self._fd = files.open_fd(segment_path(self.directory, segment))
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
        self._fd = files.open_fd(segment_path(self.directory, self.segment), truncate=True)
        self.end = 0
        self._sizes[self.segment] = 0
        self._new_file = True

    def append(self, parts: list[memoryview | bytes]) -> tuple[int, int]:
        """Write ``parts`` contiguously; return (segment, offset of the first part)."""
        total = sum(memoryview(p).nbytes for p in parts)
        if self.end and self.end + total > self.limit:
            self.rotate()
        offset = self.end
        files.write_at(self._fd, parts, offset)
        self.end += total
        self._sizes[self.segment] = self.end
        return self.segment, offset

    def sizes(self) -> list[tuple[int, int]]:
        """(segment, size) of the segments appended to since ``committed`` was called."""
        return sorted(self._sizes.items())

    def committed(self) -> None:
        """The transaction that stored ``sizes()`` committed."""
        self._sizes.clear()

    def sync(self) -> None:
        """Make what was appended durable (and a new file's directory entry), if ``fsync``."""
        if self._fsync:
            files.sync(self._fd)
            if self._new_file:
                files.sync_dir(self.directory)
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
        if nbytes == 0:  # its file may not exist
            return np.zeros(shape, dtype="<f4")
        m = self._map(segment, offset + nbytes)
        return np.frombuffer(m, dtype="<f4", count=nbytes // 4, offset=offset).reshape(shape)

    def close(self) -> None:
        """Drop the mappings (arrays handed out keep theirs alive)."""
        for m in self._maps.values():
            with contextlib.suppress(BufferError):
                m.close()
        self._maps.clear()
