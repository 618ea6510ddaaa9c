"""The store's writer: the daemon's ``Recorder``: metadata in SQLite, arrays in segment files.

Why SQLite in WAL mode for the metadata: one file, no server, readable by every language,
transactional, and a reader (``labd data``, the trainer) never blocks the writer nor sees a
half-written measurement. In WAL mode a commit is an append to the ``-wal`` file; QCoDeS and
most lab data loggers settle on the same choice. HDF5 has no crash-safe transactions (a killed
writer can leave the file unreadable); a directory of ``.npy`` files has no atomic metadata and
no queries. The arrays themselves are not in SQLite: each ``x``, ``y`` and distinct ``theta``
is written once into an append-only segment file (``labd.store.segments``) and the rows refer
to it by (segment, offset, bytes), so SQLite copies small rows instead of every byte three
times (binding, WAL, checkpoint).

Guarantee (``synchronous = "normal"``, the default): ``record()`` returns only after the
measurement was copied into the store's journal ring (``labd.store.ring``: a shared mapping of
a file, i.e. the operating system's page cache; no SQLite commit and no system call on the
serving path); the writer thread ingests ring records into segments and SQLite in groups, and
opening the store after a crash (``Store`` or ``StoreReader``) replays what was not ingested,
exactly once. The worker sends the reply after ``record()`` returns, so **every measurement
whose reply reached a client is in the store after the daemon process dies in any way,
``kill -9`` included** (the OS still holds the written pages). It is *not* durable against
power loss or an OS crash: the last measurements before one may be lost (the database stays
consistent: rows whose segment bytes did not reach the disk are dropped, with an error in the
log, when the store is next opened). ``synchronous = "full"`` ``msync``-s the ring at every
record, ``fdatasync``-s the segments before every commit and the WAL at every commit, which
extends the guarantee to power loss at the cost of a few syncs per request.

Contract:

* ``Store(path, synchronous=, max_bytes=, max_age_days=, prune_interval_s=)`` creates or
  opens the file (and ``<path>.labd-ring``, ``<path>.labd-blobs/``), upgrades its schema
  (``labd.store.schema``), replays the ring (and the journal of a version 3 store, see
  ``labd.store.journal``) and reads the sequence high-water mark; ``next_seq()`` returns it:
  max(seq + rows) over stored measurements and the persisted ``next_seq`` counter, which also
  covers pruned rows and systems with ``record = false`` (see ``reserve``). Sequence numbers
  therefore never repeat across restarts.
* ``start_run(config, devices)`` stores the run record (full config JSON, package versions,
  ``describe()`` of every system: no hidden parameter) and starts the writer thread.
* ``record(m)`` (any thread, concurrently) copies the measurement into the ring and queues it
  for the writer thread, which ingests whatever arrived meanwhile as one transaction (group
  commit): one ``pwritev`` of the arrays per measurement into the newest segment, then the
  rows. ``theta`` is stored once per distinct value: ``record`` compares its bytes with the last
  ``THETA_CACHE`` distinct thetas of the same system (a ``memcmp``, ~10 us at 256 KiB, no
  copy); when one is equal, the ring record carries no theta but the ``seq`` of the measurement
  that carried it (``theta_seq`` in its metadata), and the measurements row refers to the same
  ``thetas`` row. The writer thread files each carried theta under its digest
  (``schema.theta_digest``), so equal thetas share a row (and segment bytes) whichever way they
  came. Raises ``StoreError`` if the ring cannot be written, the store is closed, or the
  numbers ``seq .. seq + rows - 1`` overlap numbers already recorded (the unique index on
  ``seq``, checked in memory before anything is written). A failed commit does not lose data:
  it is logged and retried (what it appended to a segment is cut off first); the ring holds
  it. When the ring is full of records not yet ingested, ``record`` waits for ingestion
  (back-pressure). The writer thread gathers what arrives within ``INGEST_LINGER_S`` (0.1 s)
  into one transaction, so a reader of a live store sees a measurement up to that much after
  its reply (``close()`` ingests everything at once; a crash loses nothing: the ring has it).
* ``recent(limit)``: the last recorded measurements as ``Reply`` records, for the daemon's
  reply cache after a restart.
* ``reserve(system, seq, rows)``: the same for a measurement of an unrecorded system: only the
  high-water mark and the system's unrecorded counts are committed.
* One process writes a store at a time: the ring is locked (``StoreError`` otherwise).
* A store is three things side by side: ``<path>`` (SQLite), ``<path>.labd-blobs/`` (the
  arrays) and ``<path>.labd-ring``; copy the first two together (with no daemon writing).
* Growth: with ``max_age_days`` measurements received earlier are deleted; with ``max_bytes``
  the oldest measurements are deleted until the database's used pages and the segments fit.
  **Pruning deletes data.** It runs in the writer thread at start and every
  ``prune_interval_s``, never per request, and deletes the thetas no remaining measurement
  refers to, then whole segment files: a segment nothing refers to any more is deleted; one
  that is at least half dead, or any partly dead one while the store is over ``max_bytes``, has
  its live arrays copied into the newest segment first (``compaction``; with ``max_bytes``,
  segments are closed at 1/16 of it, so little is copied). Freed database pages are returned to
  the file system (incremental auto-vacuum). A ring record that refers to an earlier one's
  theta must find it at ingestion (and at replay after a crash), so pruning happens at a
  *fence*: ``record``'s theta memory is emptied and a marker queued, under the lock that orders
  the ring; the writer prunes when it dequeues the marker, after ingesting everything recorded
  before it and nothing after it. Whatever refers to a pruned measurement's theta was therefore
  already ingested (rows refer to ``thetas`` by id), and whatever comes after the fence refers
  only to thetas carried after it.
* ``close()`` ingests what is queued, stops the thread and closes the files. The ring stays,
  fully ingested, for the next start.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import platform
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labd.config import StoreConfig
from labd.daemon.recording import Measurement, Reply
from labd.store import schema
from labd.store import segments as seg
from labd.store.journal import Journal, JournalBusy, journal_path
from labd.store.ring import Ring, RingBusy, RingFull, ring_path
from labd.store.segments import SegmentReader, SegmentWriter

log = logging.getLogger("labd.store")

Synchronous = Literal["normal", "full"]
#: Most measurements, and most payload bytes, committed in one transaction.
MAX_GROUP = 256
MAX_GROUP_BYTES = 64 * 1024 * 1024
#: Page size of new files: the rows are small (arrays are in segments), and a commit rewrites
#: whole pages of the table and each index.
PAGE_SIZE = 4096
#: Bytes a measurement costs beyond its arrays (row, index entries), for size pruning.
ROW_OVERHEAD = 256
#: The WAL file is cut back to this size when it restarts after a burst.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: With ``max_bytes``, segments are closed at ``max_bytes // SEGMENTS_PER_LIMIT`` bytes (at
#: least MIN_SEGMENT_BYTES, at most ``segments.SEGMENT_BYTES``).
SEGMENTS_PER_LIMIT = 16
MIN_SEGMENT_BYTES = 256 * 1024
#: The writer thread waits this long after a measurement arrives for more to commit with it,
#: unless LINGER_BYTES of payload are already waiting (ingestion lags the replies by this much;
#: durability does not depend on it: the ring has every acknowledged measurement).
INGEST_LINGER_S = 0.1
LINGER_BYTES = 16 * 1024 * 1024
#: Distinct recent thetas per system that ``record`` compares a theta with (recording a
#: reference instead of the bytes when one is equal); thetas larger than THETA_CACHE_BYTES are
#: always written whole (no copy is kept).
THETA_CACHE = 4
THETA_CACHE_BYTES = 4 * 1024 * 1024
#: Nice value of the writer thread: when the CPUs are busy, the serving threads go first (the
#: ring absorbs what the writer defers; ``record`` waits only when it is full).
WRITER_NICE = int(os.environ.get("LABD_STORE_WRITER_NICE", "10"))
#: Seconds between two attempts to commit a group that failed.
RETRY_S = 1.0
PACKAGES = ("labd", "numpy", "torch", "pyzmq", "pydantic")

_INSERT = """INSERT INTO measurements (run, system, seq, rows, client, request_id, received,
    done, elapsed_s, x_shape, theta_shape, y_shape, theta_id, segment, x_offset, x_bytes,
    y_offset, y_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UNRECORDED = """INSERT INTO unrecorded VALUES (?, 1, ?) ON CONFLICT(system)
    DO UPDATE SET requests = requests + 1, rows = rows + excluded.rows"""
_COUNTER = """INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?"""
_SEGMENT = """INSERT INTO segments VALUES (?, ?) ON CONFLICT(id)
    DO UPDATE SET bytes = excluded.bytes"""


class StoreError(Exception):
    """The measurement could not be committed (disk full, store closed, ...)."""


def package_versions() -> dict[str, str]:
    """Versions of Python, SQLite and the installed packages the daemon depends on (without
    importing them)."""
    out = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for dist in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def _shape(a: np.ndarray) -> str:
    return "[" + ",".join(map(str, a.shape)) + "]"


_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _blob(a: np.ndarray) -> memoryview:
    """The array's bytes as little-endian float32, without a copy when it already is."""
    return memoryview(np.ascontiguousarray(a, dtype="<f4")).cast("B")


_EMPTY = memoryview(b"")


@dataclass(slots=True)
class _Pending:
    """One ring record waiting for ingestion."""

    row: tuple[Any, ...] | None = None  # a measurement: (meta JSON, x, theta, y), see ``_Ingestor``
    reserve: tuple[str, int] | None = None  # (system, rows) of an unrecorded measurement
    end: int = 0  # seq + rows
    nbytes: int = 0
    position: int = 0  # ring position after this record


#: Queued by ``Store._fence``: the writer prunes when it dequeues it.
_FENCE = _Pending()


class _Claims:
    """Sequence numbers recorded by this process, as merged ``[start, end)`` spans above the
    high-water mark ``floor`` found at start (everything below it was recorded before)."""

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self._starts: list[int] = []
        self._ends: list[int] = []

    def claim(self, start: int, end: int) -> bool:
        """Take ``[start, end)``; False (nothing taken) if any of it was taken before."""
        if start < self.floor:
            return False
        starts, ends = self._starts, self._ends
        i = bisect.bisect_right(starts, start)
        if (i > 0 and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
            return False
        if i > 0 and ends[i - 1] == start:
            ends[i - 1] = end
            i -= 1
        else:
            starts.insert(i, start)
            ends.insert(i, end)
        if i + 1 < len(starts) and starts[i + 1] == ends[i]:
            ends[i] = ends.pop(i + 1)
            del starts[i + 1]
        if starts[0] == self.floor:  # keep the list short: consecutive numbers merge into it
            self.floor = ends.pop(0)
            del starts[0]
        return True


def _counter(conn: sqlite3.Connection, name: str, default: int) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return default if row is None else int(row[0])


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class _Ingestor:
    """Turns ring (or legacy journal) records into segment bytes and rows; the writer thread's,
    or recovery's before it starts."""

    def __init__(self, conn: sqlite3.Connection, segments: SegmentWriter) -> None:
        self.conn = conn
        self.segments = segments
        #: seq of a measurement that carried its theta -> thetas id (a cache of the rows;
        #: cleared at pruning and after a failed transaction).
        self.theta_ids: dict[int, int] = {}

    def _rows(self, items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The ``measurements`` rows of records ``(meta, x, theta, y)`` in ring order, their
        arrays appended to the newest segment, inside the caller's transaction: a carried theta
        is filed under its digest (its bytes written only if new); a reference
        (``meta["theta_seq"]``) resolves to the theta of that measurement, earlier in
        ``items`` or already in the database (see the fence in ``Store``)."""
        conn, segments, ids = self.conn, self.segments, self.theta_ids
        if len(ids) > 4096:
            ids.clear()
        rows = []
        for meta, x, theta, y in items:
            if not isinstance(meta, dict):  # the JSON text ``record`` wrote
                meta = json.loads(meta)
            ref = meta.get("theta_seq")
            digest = None
            if ref is None:
                digest = schema.theta_digest(theta)
                found = conn.execute("SELECT id FROM thetas WHERE digest = ?",
                                     (digest,)).fetchone()
                if found is not None:
                    tid, digest = int(found[0]), None
            elif (tid := ids.get(ref)) is None:  # type: ignore[assignment]
                found = conn.execute("SELECT theta_id FROM measurements WHERE seq = ?",
                                     (ref,)).fetchone()
                if found is None:
                    raise StoreError(f"measurement {meta['seq']} refers to the theta of "
                                     f"measurement {ref}, which the store lacks")
                tid = int(found[0])
            nx, nt, ny = len(x), len(theta), len(y)
            if digest is not None:  # a new theta: stored between x and y
                segment, offset = segments.append([x, theta, y])
                tid = int(conn.execute(  # type: ignore[arg-type]
                    "INSERT INTO thetas (digest, segment, offset, bytes) VALUES (?, ?, ?, ?)",
                    (digest, segment, offset + nx, nt)).lastrowid)
                y_offset = offset + nx + nt
            else:
                segment, offset = segments.append([x, y])
                y_offset = offset + nx
            ids[meta["seq"]] = tid
            rows.append((meta["run"], meta["system"], meta["seq"], meta["rows"],
                         meta["client"], meta["request_id"], meta["received"], meta["done"],
                         meta["elapsed_s"], json.dumps(meta["x_shape"]),
                         json.dumps(meta["theta_shape"]), json.dumps(meta["y_shape"]), tid,
                         segment, offset, nx, y_offset, ny))
        return rows

    def ingest(self, items: list[tuple[Any, ...]], reserved: list[tuple[str, int]], end: int,
               counters: Iterable[tuple[str, int]]) -> None:
        """One transaction: measurements (records ``(meta, x, theta, y)`` in ring order) and
        their new thetas, unrecorded counts, the high-water mark, ``counters`` (the ring
        position) and the segments' sizes. On failure, what it appended is cut off again."""
        conn, segments = self.conn, self.segments
        mark = segments.mark()
        conn.execute("BEGIN")
        try:
            if items:
                conn.executemany(_INSERT, self._rows(items))
            if reserved:
                conn.executemany(_UNRECORDED, reserved)
            conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'next_seq'",
                         (end,))
            conn.executemany(_COUNTER, [(name, value, value) for name, value in counters])
            if sizes := segments.sizes():
                conn.executemany(_SEGMENT, sizes)
            segments.sync()  # "full": the bytes are on disk before the rows refer to them
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            self.theta_ids.clear()
            with contextlib.suppress(OSError):
                segments.rollback(mark)
            raise
        segments.committed()


def _replay(ingestor: _Ingestor, entries: Iterable[Any],
            counters: Callable[[int], list[tuple[str, int]]]) -> int:
    """Ingest ``entries`` (ring or legacy journal records) in groups of at most
    MAX_GROUP_BYTES, each committed with ``counters(position after it)``; return how many."""
    rows: list[tuple[Any, ...]] = []
    reserved: list[tuple[str, int]] = []
    end, size, done, position = 0, 0, 0, None
    for entry in entries:
        meta = entry.meta
        if meta["kind"] == "measurement":
            rows.append((meta, entry.x, entry.theta, entry.y))
            size += len(entry.x) + len(entry.theta) + len(entry.y)
        else:
            reserved.append((meta["system"], meta["rows"]))
        end = max(end, meta["seq"] + meta["rows"])
        position = entry.end
        if size >= MAX_GROUP_BYTES:
            ingestor.ingest(rows, reserved, end, counters(position))
            done += len(rows) + len(reserved)
            rows, reserved, size = [], [], 0
    if rows or reserved:
        ingestor.ingest(rows, reserved, end, counters(position))  # type: ignore[arg-type]
        done += len(rows) + len(reserved)
    return done


def _replay_legacy(conn: sqlite3.Connection, path: Path, ingestor: _Ingestor) -> int:
    """Ingest what a version 3 writer left in its journal (``labd.store.journal``), then delete
    the journal."""
    try:
        journal = Journal.open(path)
    except JournalBusy as exc:
        raise StoreError(f"{exc} (an older labd)") from None
    try:
        epoch = _counter(conn, "journal_epoch", -1)
        start = _counter(conn, "journal_offset", 0) if journal.epoch == epoch else 0
        done = _replay(ingestor, journal.entries(start), lambda end: [
            ("journal_epoch", journal.epoch), ("journal_offset", end)])
        path.unlink()  # before its counters: a crash in between replays nothing twice
        conn.execute("DELETE FROM counters WHERE name IN ('journal_epoch', 'journal_offset')")
    finally:
        journal.close()
    return done


def _open_segments(conn: sqlite3.Connection, path: Path, limit: int,
                   fsync: bool) -> SegmentWriter:
    """The writer of the newest segment, after making the files match what SQLite committed:
    unknown files deleted, uncommitted tails cut off; bytes a power loss took (a file shorter
    than committed) drop the rows that refer to them."""
    directory = seg.blobs_dir(path)
    known = dict(conn.execute("SELECT id, bytes FROM segments").fetchall())
    for segment, file in seg.segment_files(directory).items():
        if segment not in known:
            file.unlink()  # begun by a transaction that did not commit
    lost = []
    for segment, size in sorted(known.items()):
        file = seg.segment_path(directory, segment)
        actual = file.stat().st_size if file.exists() else 0
        if actual > size:
            os.truncate(file, size)
        elif actual < size:
            lost.append((segment, actual))
    if lost:
        _drop_lost(conn, lost)
        known.update(lost)
    newest = max(known, default=1)
    return SegmentWriter(directory, newest, known.get(newest, 0), limit, fsync)


def _drop_lost(conn: sqlite3.Connection, lost: list[tuple[int, int]]) -> None:
    conn.execute("BEGIN")
    try:
        n = 0
        for segment, size in lost:
            tids = [r[0] for r in conn.execute(
                "SELECT id FROM thetas WHERE segment = ? AND offset + bytes > ?",
                (segment, size))]
            for tid in tids:
                n += conn.execute("DELETE FROM measurements WHERE theta_id = ?",
                                  (tid,)).rowcount
                conn.execute("DELETE FROM thetas WHERE id = ?", (tid,))
            n += conn.execute("DELETE FROM measurements WHERE segment = ? AND "
                              "max(x_offset + x_bytes, y_offset + y_bytes) > ?",
                              (segment, size)).rowcount
            conn.execute("UPDATE segments SET bytes = ? WHERE id = ?", (size, segment))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    log.error("store: %d measurements lost their arrays (segments %s shorter than committed: "
              "power loss or an OS crash?); their rows are deleted", n,
              ", ".join(str(s) for s, _ in lost))


def recover(conn: sqlite3.Connection, path: Path, ring: Ring, ingestor: _Ingestor,
            fsync: bool = False, reset: bool = True) -> int:
    """Ingest the records the database lacks (a crashed writer's): a version 3 journal's, then
    the ring's; with ``reset``, start an empty ring after them (``Ring.grow``); return the
    number ingested."""
    done = 0
    legacy = journal_path(path)
    if legacy.exists():
        done += _replay_legacy(conn, legacy, ingestor)
    position = _counter(conn, "ring_position", 0)
    if ring.valid:
        done += _replay(ingestor, ring.entries(position),
                        lambda end: [("ring_position", end)])
    if reset:
        ring.grow(ring.end if ring.valid else position, fsync=fsync)
    if done:
        log.warning("store: recovered %d entries from the journal of a writer that died", done)
    return done


def _unreplayed(path: Path, ring: Ring) -> bool:
    """Whether the ring (or a version 3 journal) holds records the database lacks."""
    if not path.exists():
        return False
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        found = schema.version(conn)
        epoch = _counter(conn, "journal_epoch", -1) if found >= 2 else -1
        offset = _counter(conn, "journal_offset", 0) if found >= 2 else 0
        position = _counter(conn, "ring_position", 0) if found >= 4 else 0
    finally:
        conn.close()
    legacy = journal_path(path)
    if legacy.exists():
        try:
            journal = Journal.open(legacy)
        except JournalBusy:
            return False  # an older labd writes this store
        try:
            if next(journal.entries(offset if journal.epoch == epoch else 0), None):
                return True
        finally:
            journal.close()
    return found >= 4 and ring.valid and next(ring.entries(position), None) is not None


def recover_path(path: str | Path) -> int:
    """Replay the ring of the store at ``path`` if a crashed writer left records in it and no
    live process writes the store (what ``StoreReader`` calls on opening); return entries
    ingested."""
    p = Path(path).expanduser()
    rpath = ring_path(p)
    if not (rpath.exists() or journal_path(p).exists()):
        return 0
    try:
        ring = Ring.open(rpath)
    except RingBusy:
        return 0  # a live daemon ingests it
    try:
        if not _unreplayed(p, ring):
            return 0
        conn = connect(p)
        try:
            segments = _open_segments(conn, p, seg.SEGMENT_BYTES, False)
            try:
                return recover(conn, p, ring, _Ingestor(conn, segments), reset=False)
            finally:
                segments.close()
        finally:
            conn.close()
    finally:
        ring.close()


def connect(path: str | Path, synchronous: Synchronous = "normal") -> sqlite3.Connection:
    """Open (creating if needed) the store file in WAL mode, its schema upgraded (call it
    holding the ring's lock: the step to version 4 writes segment files)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if schema.version(conn) == 0:  # only settable before the first table exists
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{p}: cannot use WAL mode (got {mode!r}); is it on a network "
                             f"file system?")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        old = schema.upgrade(conn)
    except BaseException:
        conn.close()
        raise
    if 0 < old < schema.SCHEMA_VERSION:
        log.info("%s: schema upgraded from version %d to %d", p, old, schema.SCHEMA_VERSION)
    return conn


def segment_limit(max_bytes: int) -> int:
    """The size at which segments are closed, for a store limited to ``max_bytes`` (0: no
    limit)."""
    if not max_bytes:
        return seg.SEGMENT_BYTES
    return min(seg.SEGMENT_BYTES, max(MIN_SEGMENT_BYTES, max_bytes // SEGMENTS_PER_LIMIT))


class Store:
    def __init__(self, path: str | Path, synchronous: Synchronous = "normal",
                 max_bytes: int = 0, max_age_days: float = 0.0,
                 prune_interval_s: float = 600.0) -> None:
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self.prune_interval_s = prune_interval_s
        self._fsync = synchronous == "full"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._ring = Ring.open(ring_path(self.path))
        except RingBusy as exc:
            raise StoreError(str(exc)) from None
        try:
            self._conn = connect(self.path, synchronous)
            try:
                self._segments = _open_segments(self._conn, self.path,
                                                segment_limit(max_bytes), self._fsync)
                self._ingestor = _Ingestor(self._conn, self._segments)
                recover(self._conn, self.path, self._ring, self._ingestor, self._fsync)
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            self._ring.close()
            raise
        self._next_seq = int(self._conn.execute(
            "SELECT max(coalesce((SELECT value FROM counters WHERE name = 'next_seq'), 0), "
            "coalesce((SELECT seq + rows FROM measurements ORDER BY seq DESC LIMIT 1), 0))"
        ).fetchone()[0])
        self._claims = _Claims(self._next_seq)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._queued = 0  # payload bytes queued for the writer thread (under _lock)
        self._flush = threading.Event()  # ends the writer's linger early
        # Orders ring appends, queue puts and close(); the writer notifies on progress.
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._ingested = self._ring.end  # ring position up to which SQLite has it
        #: Per system, the last THETA_CACHE distinct thetas recorded since the last fence,
        #: newest first: (bytes, seq of the measurement that carried them). Under _lock.
        self._thetas: dict[str, list[tuple[bytes, int]]] = {}
        self._closed = False
        self._run: int | None = None
        self._thread = threading.Thread(target=self._write_loop, name="labd-store", daemon=True)

    # -- Recorder -----------------------------------------------------------------------------

    def next_seq(self) -> int:
        return self._next_seq

    def recent(self, limit: int) -> list[Reply]:
        """The last ``limit`` recorded measurements as the replies they produced, oldest
        first: the daemon re-fills its reply cache with them at start, so a client that
        retries a request across a crash and restart gets the recorded reply instead of a
        second measurement."""
        rows = self._conn.execute(
            "SELECT client, request_id, seq, elapsed_s, y_shape, segment, y_offset, y_bytes "
            "FROM measurements ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        reader = SegmentReader(seg.blobs_dir(self.path))
        try:
            return [Reply(client, rid, seq, elapsed,
                          np.frombuffer(reader.read(segment, offset, nbytes),
                                        dtype="<f4").reshape(json.loads(shape)))
                    for client, rid, seq, elapsed, shape, segment, offset, nbytes
                    in reversed(rows)]
        finally:
            reader.close()

    def start_run(self, config: dict[str, Any], devices: dict[str, Any]) -> None:
        if self._run is not None:
            raise StoreError("start_run was already called on this store")
        cur = self._conn.execute(
            "INSERT INTO runs (started, host, pid, versions, config, devices) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), socket.gethostname(), os.getpid(), json.dumps(package_versions()),
             json.dumps(config), json.dumps(devices)))
        self._run = cur.lastrowid
        self._thread.start()

    def record(self, m: Measurement) -> None:
        if self._run is None:
            raise StoreError("record before start_run")
        x, theta, y = _blob(m.x), _blob(m.theta), _blob(m.y)
        seq, rows = int(m.seq), int(m.x.shape[0])
        # The metadata as JSON text directly (the writer thread parses it): a dict and
        # json.dumps cost ~50 us here on a serving thread that has just woken up.
        meta = (f'{{"kind":"measurement","run":{self._run},"system":{_json_str(m.system)},'
                f'"seq":{seq},"rows":{rows},"client":{_json_str(m.client)},'
                f'"request_id":{_json_str(m.request_id)},"received":{float(m.received)!r},'
                f'"done":{float(m.done)!r},"elapsed_s":{float(m.elapsed_s)!r},'
                f'"x_shape":{_shape(m.x)},"theta_shape":{_shape(m.theta)},'
                f'"y_shape":{_shape(m.y)}')
        self._submit(m.system, seq, rows, meta, (x, theta, y), _Pending(
            row=(), end=seq + rows, nbytes=x.nbytes + theta.nbytes + y.nbytes),
            theta.nbytes <= THETA_CACHE_BYTES)

    def reserve(self, system: str, seq: int, rows: int) -> None:
        if self._run is None:
            raise StoreError("reserve before start_run")
        meta = json.dumps({"kind": "reserve", "system": system, "seq": seq, "rows": rows})
        self._submit(system, seq, rows, meta[:-1], (_EMPTY, _EMPTY, _EMPTY),
                     _Pending(reserve=(system, rows), end=seq + rows))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
            self._flush.set()
            self._progress.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._ingested != self._ring.end:  # commits kept failing
            log.error("store: %d ring bytes not ingested; the next opening of the store "
                      "replays them", self._ring.end - self._ingested)
        self._segments.close()
        self._ring.close()
        self._conn.close()

    # -- callers' side ------------------------------------------------------------------------

    def _submit(self, system: str, seq: int, rows: int, meta: str,
                arrays: tuple[memoryview, memoryview, memoryview], pending: _Pending,
                compare: bool = False) -> None:
        """Write the ring record of ``meta`` (a JSON object's text without its closing brace)
        and ``arrays``, and queue ``pending`` for the writer thread."""
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if not self._claims.claim(seq, seq + rows):
                raise StoreError(f"measurement not stored: UNIQUE constraint failed: numbers "
                                 f"{seq}..{seq + rows - 1} overlap numbers already recorded")
            seen = None
            if compare:
                seen = self._thetas.setdefault(system, [])
                theta = arrays[1]
                for i, (known, carrier) in enumerate(seen):
                    # bytes.startswith(memoryview) is a memcmp without a copy; equal lengths
                    # make it equality
                    if len(known) == theta.nbytes and known.startswith(theta):
                        seen.insert(0, seen.pop(i))  # record a reference instead of the bytes
                        meta += f',"theta_seq":{carrier}'
                        x, _, y = arrays
                        arrays = (x, _EMPTY, y)
                        pending.nbytes = x.nbytes + y.nbytes
                        seen = None
                        break
            body = (meta + "}").encode()
            while True:
                try:
                    pending.position, copies = self._ring.append(body, *arrays,
                                                                 self._ingested, self._fsync)
                    break
                except RingFull:  # wait for ingestion (back-pressure)
                    if self._ingested == self._ring.end:  # all ingested: the record is larger
                        need = sum(a.nbytes for a in arrays) + 65536 + len(body)
                        self._ring.grow(self._ring.end, need, self._fsync)
                        self._ingested = self._ring.end
                        continue
                    self._flush.set()
                    self._progress.wait()
                    if self._closed:
                        raise StoreError("the store is closed") from None
                except OSError as exc:
                    raise StoreError(f"measurement not stored: {exc}") from exc
            if pending.row is not None:
                # The writer reads the ring's copies, so that the request's buffers are freed
                # with its reply (and reused, still in the cache, by the next request).
                pending.row = (body, *copies)
            if seen is not None:  # carried: later equal thetas refer to this measurement
                seen.insert(0, (bytes(arrays[1]), seq))
                del seen[THETA_CACHE:]
            self._queue.put(pending)
            self._queued += pending.nbytes
            if self._queued >= LINGER_BYTES:
                self._flush.set()

    # -- the writer thread --------------------------------------------------------------------

    def _fence(self) -> None:
        """Queue a prune after everything recorded so far (see the class contract); later
        records carry their thetas again."""
        with self._lock:
            self._thetas.clear()
            self._queue.put(_FENCE)

    def _write_loop(self) -> None:
        if WRITER_NICE:  # this thread only (a Linux thread id is a process id for the kernel)
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        pruning = bool(self.max_age_days or self.max_bytes)
        if pruning:
            self._fence()
        next_prune = math.inf
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=max(0.0, min(next_prune - time.monotonic(),
                                                             3600.0)))
            except queue.Empty:
                first = _Pending()  # nothing to write
            if first is None:
                break
            if first is _FENCE:
                self._prune()
                next_prune = time.monotonic() + self.prune_interval_s
                continue
            fenced = False
            group = [first]
            size = first.nbytes
            # Linger: let what arrives within INGEST_LINGER_S (up to LINGER_BYTES) join the
            # same transaction. The ring already holds every item durably; fewer, larger
            # commits rewrite the table's, the indexes' and the counters' pages once per group
            # instead of once per measurement. The thread sleeps meanwhile instead of waking
            # for every item (``_submit`` and ``close`` cut the sleep short).
            if first.nbytes:
                self._flush.wait(INGEST_LINGER_S)
            while len(group) < MAX_GROUP and size < MAX_GROUP_BYTES:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                if item is _FENCE:
                    fenced = True
                    break
                group.append(item)
                size += item.nbytes
            with self._lock:
                self._queued -= size
                if self._queued < LINGER_BYTES and not self._closed:
                    self._flush.clear()
            if not self._commit(group):
                return  # closing while commits fail: the ring keeps the rest for replay
            if fenced:
                self._prune()
                next_prune = time.monotonic() + self.prune_interval_s
            elif pruning and time.monotonic() >= next_prune:
                self._fence()
                next_prune = math.inf  # until the fence is dequeued

    def _commit(self, group: list[_Pending]) -> bool:
        """Ingest ``group`` (in ring order), retrying every ``RETRY_S`` while it fails. False
        if the store closed while the commit kept failing."""
        rows = [p.row for p in group if p.row is not None]
        reserved = [p.reserve for p in group if p.reserve is not None]
        if not (rows or reserved):
            return True
        position = max(p.position for p in group)
        while True:
            try:
                self._ingestor.ingest(rows, reserved, max(p.end for p in group),
                                      [("ring_position", position)])
                break
            except (sqlite3.Error, OSError, StoreError):
                log.exception("store: cannot commit %d measurements (kept in the ring; "
                              "retrying in %g s)", len(group), RETRY_S)
                if self._closed:
                    return False
                time.sleep(RETRY_S)
        with self._lock:
            self._ingested = position
            self._progress.notify_all()
        return True

    # -- pruning (the writer thread, at a fence) ----------------------------------------------

    def _used_bytes(self) -> int:
        """The database's used pages and the segments' committed bytes."""
        conn = self._conn
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = (conn.execute("PRAGMA page_count").fetchone()[0]
                 - conn.execute("PRAGMA freelist_count").fetchone()[0])
        return page * pages + conn.execute(
            "SELECT coalesce(sum(bytes), 0) FROM segments").fetchone()[0]

    def _prune(self) -> None:
        """Delete measurements beyond the age and size limits, the thetas no measurement
        refers to any more, and the segments nothing refers to (compacting partly dead ones),
        in one transaction; then the segment files."""
        if not (self.max_age_days or self.max_bytes):
            return
        conn, segments = self._conn, self._segments
        self._ingestor.theta_ids.clear()
        try:
            if self.max_bytes and self._used_bytes() > self.max_bytes:
                segments.rotate()  # the newest segment may go too
            mark = segments.mark()
            conn.execute("BEGIN")
            try:
                deleted, thetas = 0, set()
                if self.max_age_days:
                    cutoff = time.time() - self.max_age_days * 86400.0
                    thetas.update(r[0] for r in conn.execute(
                        "SELECT DISTINCT theta_id FROM measurements WHERE received < ?",
                        (cutoff,)))
                    deleted += conn.execute("DELETE FROM measurements WHERE received < ?",
                                            (cutoff,)).rowcount
                if self.max_bytes:
                    deleted += self._prune_size(thetas)
                dropped = sum(conn.execute(
                    "DELETE FROM thetas WHERE id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM measurements WHERE theta_id = ?)", (t, t)).rowcount
                    for t in sorted(thetas))
                if deleted and self._live_bytes(segments.segment) < segments.end:
                    segments.rotate()  # the newest segment lost arrays: compact it too
                gone = self._compact() if deleted or dropped else []
                if sizes := segments.sizes():
                    conn.executemany(_SEGMENT, sizes)
                segments.sync()
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                with contextlib.suppress(OSError):
                    segments.rollback(mark)
                raise
            segments.committed()
            for segment in gone:
                with contextlib.suppress(FileNotFoundError):
                    seg.segment_path(segments.directory, segment).unlink()
            if deleted:
                conn.executescript("PRAGMA incremental_vacuum")  # execute() frees one page
                log.info("store: pruned %d measurements and %d thetas; %d segment files "
                         "deleted", deleted, dropped, len(gone))
        except (sqlite3.Error, OSError):
            log.exception("store: pruning failed")

    def _prune_size(self, thetas: set[int]) -> int:
        """Delete the oldest measurements until the store fits ``max_bytes`` (estimated: a
        theta counts as freed with the first deleted measurement that refers to it); add the
        thetas they referred to to ``thetas``."""
        conn = self._conn
        excess = self._used_bytes() - self.max_bytes
        if excess <= 0:
            return 0
        freed, cutoff, seen = 0, None, set()
        cur = conn.execute("SELECT m.id, m.x_bytes + m.y_bytes, m.theta_id, t.bytes "
                           "FROM measurements m JOIN thetas t ON t.id = m.theta_id "
                           "ORDER BY m.id")
        for mid, size, tid, theta_bytes in cur:
            freed += size + ROW_OVERHEAD
            if tid not in seen:
                seen.add(tid)
                freed += theta_bytes
            cutoff = mid
            if freed >= excess:
                break
        cur.close()
        if cutoff is None:
            return 0
        thetas.update(seen)
        return conn.execute("DELETE FROM measurements WHERE id <= ?", (cutoff,)).rowcount

    def _live_bytes(self, segment: int) -> int:
        """Bytes of ``segment`` that rows refer to."""
        return self._conn.execute(
            "SELECT (SELECT coalesce(sum(x_bytes + y_bytes), 0) FROM measurements WHERE "
            "segment = ?) + (SELECT coalesce(sum(bytes), 0) FROM thetas WHERE segment = ?)",
            (segment, segment)).fetchone()[0]

    def _compact(self) -> list[int]:
        """Inside the prune's transaction: the segments (older than the newest) to delete:
        those nothing refers to, and those at least half dead or partly dead while the store
        is over ``max_bytes``, after copying their live arrays into the newest segment."""
        conn, segments = self._conn, self._segments
        over = self._used_bytes() - self.max_bytes if self.max_bytes else 0
        gone = []
        for segment, size in conn.execute("SELECT id, bytes FROM segments WHERE id < ? "
                                          "ORDER BY id", (segments.segment,)).fetchall():
            measured = conn.execute("SELECT id, x_offset, x_bytes, y_offset, y_bytes FROM "
                                    "measurements WHERE segment = ?", (segment,)).fetchall()
            thetas = conn.execute("SELECT id, offset, bytes FROM thetas WHERE segment = ?",
                                  (segment,)).fetchall()
            live = sum(r[2] + r[4] for r in measured) + sum(r[2] for r in thetas)
            dead = size - live
            if not (measured or thetas) or (dead > 0 and (2 * dead >= size or over > 0)):
                if measured or thetas:
                    self._relocate(segment, measured, thetas)
                conn.execute("DELETE FROM segments WHERE id = ?", (segment,))
                gone.append(segment)
                over -= dead
        return gone

    def _relocate(self, segment: int, measured: list[tuple[int, int, int, int, int]],
                  thetas: list[tuple[int, int, int]]) -> None:
        """Copy the live arrays of ``segment`` into the newest segment and point their rows
        there (inside the prune's transaction)."""
        conn, segments = self._conn, self._segments
        fd = os.open(seg.segment_path(segments.directory, segment), os.O_RDONLY)
        try:
            for mid, x_offset, nx, y_offset, ny in measured:
                new, offset = segments.append([os.pread(fd, nx, x_offset),
                                               os.pread(fd, ny, y_offset)])
                conn.execute("UPDATE measurements SET segment = ?, x_offset = ?, y_offset = ? "
                             "WHERE id = ?", (new, offset, offset + nx, mid))
            for tid, offset, n in thetas:
                new, at = segments.append([os.pread(fd, n, offset)])
                conn.execute("UPDATE thetas SET segment = ?, offset = ? WHERE id = ?",
                             (new, at, tid))
        finally:
            os.close(fd)


def open_store(path: str | Path, options: StoreConfig | None = None) -> Store:
    """The daemon's recorder at ``path`` with the ``[store]`` table's options (defaults if
    None)."""
    if options is None:
        return Store(path)
    return Store(path, synchronous=options.synchronous, max_bytes=options.max_bytes,
                 max_age_days=options.max_age_days,
                 prune_interval_s=options.prune_interval_s)
