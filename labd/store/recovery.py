"""Recovery: making a store whole again after its writer died.

``open_segments`` makes the segment files match what SQLite committed: unknown files deleted,
bytes past a committed size cut off; a file shorter than committed (power loss, an OS crash)
loses the rows that refer past its end, with an error in the log. ``open_recovered`` opens a
store for writing and first ingests what the ring holds beyond the database, exactly once;
``recover_path`` does that for a reader when no process writes the store, as SQLite replays a
hot journal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from labd.store import files
from labd.store import segments as seg
from labd.store.database import Synchronous, connect, counter, transaction
from labd.store.ingest import replay
from labd.store.ring import Ring, ring_path

log = logging.getLogger("labd.store")


def open_segments(conn: sqlite3.Connection, path: Path, limit: int = seg.SEGMENT_BYTES,
                  fsync: bool = False) -> seg.SegmentWriter:
    directory = seg.blobs_dir(path)
    known = dict(conn.execute("SELECT id, bytes FROM segments").fetchall())
    for segment, file in seg.segment_files(directory).items():
        if segment not in known:
            seg.delete(file)
        elif file.stat().st_size > known[segment]:
            os.truncate(file, known[segment])
    lost = []  # (segment, size) of files shorter than committed
    for segment, size in sorted(known.items()):
        file = seg.segment_path(directory, segment)
        if (actual := file.stat().st_size if file.exists() else 0) < size:
            lost.append((segment, actual))
    if lost:
        with transaction(conn):
            n = sum(conn.execute(
                "DELETE FROM measurements WHERE (segment = ?1 AND max(x_offset + x_bytes, "
                "y_offset + y_bytes) > ?2) OR theta_id IN (SELECT id FROM thetas WHERE "
                "segment = ?1 AND offset + bytes > ?2)", (s, size)).rowcount for s, size in lost)
            conn.executemany("DELETE FROM thetas WHERE segment = ? AND offset + bytes > ?", lost)
            conn.executemany("UPDATE segments SET bytes = ?2 WHERE id = ?1", lost)
        log.error("store: %d measurements lost their arrays (segments %s shorter than "
                  "committed: power loss or an OS crash?); their rows are deleted", n,
                  ", ".join(str(s) for s, _ in lost))
        known.update(lost)
    newest = max(known, default=1)
    return seg.SegmentWriter(directory, newest, known.get(newest, 0), limit, fsync)


def open_recovered(path: Path, synchronous: Synchronous = "normal", limit: int = seg.SEGMENT_BYTES,
                   fsync: bool = False, reset: bool = True
                   ) -> tuple[Ring, sqlite3.Connection, seg.SegmentWriter]:
    """The store's ring (locked: ``files.Busy``), database and newest segment, what the ring
    held beyond the database ingested; with ``reset`` an empty ring follows."""
    with contextlib.ExitStack() as undo:
        ring = Ring(ring_path(path))
        undo.callback(ring.close)
        conn = connect(path, synchronous)
        undo.callback(conn.close)
        segments = open_segments(conn, path, limit, fsync)
        undo.callback(segments.close)
        start = counter(conn, "ring_position")
        done, position = replay(conn, segments, ring.entries(start), start)
        if done:
            log.warning("store: recovered %d records of a writer that died", done)
        if reset:
            ring.grow(position, fsync=fsync)
        undo.pop_all()
    return ring, conn, segments


def recover_path(path: Path) -> None:
    """``open_recovered`` for a reader, unless a live process writes the store."""
    if ring_path(path).exists():
        with contextlib.suppress(files.Busy, PermissionError):
            for opened in open_recovered(path, reset=False):
                opened.close()
