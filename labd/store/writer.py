"""The store's writer: the daemon's ``Recorder``, one SQLite file, one writer thread.

Why SQLite in WAL mode: one file, no server, readable by every language, transactional, and a
reader (``labd data``, the trainer) never blocks the writer nor sees a half-written
measurement. In WAL mode a commit is an append to the ``-wal`` file; QCoDeS and most lab data
loggers settle on the same choice. HDF5 has no crash-safe transactions (a killed writer can
leave the file unreadable); a directory of ``.npy`` files has no atomic metadata and no queries.

Guarantee (``synchronous = "normal"``, the default): ``record()`` returns only after the
measurement was appended to the store's journal (``labd.store.journal``: one ``writev`` to the
operating system, no SQLite commit on the serving path); the writer thread ingests journal
entries into SQLite in groups, and opening the store after a crash (``Store`` or
``StoreReader``) replays what was not ingested, exactly once. The worker sends the reply after
``record()`` returns, so **every measurement whose reply reached a client is in the store after
the daemon process dies in any way, ``kill -9`` included** (the OS still holds the written
pages). It is *not* durable against power loss or an OS crash: the last measurements before one
may be lost (the database stays consistent). ``synchronous = "full"`` fsyncs the journal at
every record and the WAL at every commit, which extends the guarantee to power loss at the cost
of one fsync per request.

Contract:

* ``Store(path, synchronous=, max_bytes=, max_age_days=, prune_interval_s=)`` creates or
  opens the file, upgrades its schema (``labd.store.schema``) and reads the sequence
  high-water mark; ``next_seq()`` returns it: max(seq + rows) over stored measurements and the
  persisted ``next_seq`` counter, which also covers pruned rows and systems with
  ``record = false`` (see ``reserve``). Sequence numbers therefore never repeat across restarts.
* ``start_run(config, devices)`` stores the run record (full config JSON, package versions,
  ``describe()`` of every system: no hidden parameter) and starts the writer thread.
* ``record(m)`` (any thread, concurrently) appends the measurement to the journal and queues
  it for the writer thread, which commits whatever arrived meanwhile as one transaction (group
  commit, one ``executemany``). The arrays go to the journal and to SQLite as memoryviews of
  the request's buffers, never copied in Python, except ``theta``: it is stored once per distinct
  value. ``record`` compares its bytes with the last ``THETA_CACHE`` distinct thetas of the
  same system (a copy and a ``memcmp``, ~25 us at 256 KiB); when one is equal, the journal
  record carries no theta but the ``seq`` of the measurement that carried it (``theta_seq`` in
  its metadata), and the measurements row refers to the same ``thetas`` row. The writer thread
  files each carried theta under its digest (``schema.theta_digest``), so equal thetas share a
  row whichever way they came. Raises ``StoreError`` if the journal write
  failed, the store is closed, or the numbers ``seq .. seq + rows - 1`` overlap numbers already
  recorded (the unique index on ``seq``, checked in memory before anything is written). A
  failed SQLite commit does not lose data: it is logged and retried; the journal holds it.
  When ingestion falls ``MAX_JOURNAL_BYTES`` behind, ``record`` waits for it (back-pressure).
  The writer thread gathers what arrives within ``INGEST_LINGER_S`` (0.1 s) into one
  transaction, so a reader of a live store sees a measurement up to that much after its reply
  (``close()`` ingests everything at once; a crash loses nothing: the journal has it).
* ``recent(limit)``: the last recorded measurements as ``Reply`` records, for the daemon's
  reply cache after a restart.
* ``reserve(system, seq, rows)``: the same for a measurement of an unrecorded system: only the
  high-water mark and the system's unrecorded counts are committed.
* One process writes a store at a time: the journal is locked (``StoreError`` otherwise).
* Growth: with ``max_age_days`` measurements received earlier are deleted; with ``max_bytes``
  the oldest measurements are deleted until the database's used pages fit. **Pruning deletes
  data.** It runs in the writer thread at start and every ``prune_interval_s``, never per
  request, and deletes the thetas no remaining measurement refers to; freed pages are returned
  to the file system (incremental auto-vacuum). A journal record that refers to an earlier
  one's theta must find it at ingestion (and at replay after a crash), so pruning happens at a
  *fence*: ``record``'s theta memory is emptied and a marker queued, under the lock that orders
  the journal; the writer prunes when it dequeues the marker, after ingesting everything
  journaled before it and nothing after it. Whatever refers to a pruned measurement's theta was
  therefore already ingested (rows refer to ``thetas`` by id), and whatever comes after the
  fence refers only to thetas carried after it.
* ``close()`` commits what is queued, stops the thread and closes the files (checkpointing the
  WAL into the main file). The journal file stays, fully ingested, for the next start.
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
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labd.config import StoreConfig
from labd.daemon.recording import Measurement, Reply
from labd.store import schema
from labd.store.journal import Journal, JournalBusy, journal_path

log = logging.getLogger("labd.store")

Synchronous = Literal["normal", "full"]
#: Most measurements, and most payload bytes, committed in one transaction.
MAX_GROUP = 256
MAX_GROUP_BYTES = 64 * 1024 * 1024
#: Page size of new files: big blobs want large pages (fewer, longer overflow chains), small
#: commits small ones (a commit rewrites whole pages of the table and each index). With 256 KiB
#: arrays 64 KiB measured best of 4, 16 and 64 KiB.
PAGE_SIZE = 65536
#: Bytes a measurement costs beyond its arrays (row, index entries), for size pruning.
ROW_OVERHEAD = 256
#: Payload committed between two checkpoints (each copies the WAL into the main file).
CHECKPOINT_BYTES = 16 * 1024 * 1024
#: The WAL file is cut back to this size when it restarts after a burst.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: The journal is emptied when ingestion has caught up and it holds at least this much.
JOURNAL_RESET_BYTES = 64 * 1024 * 1024
#: ``record`` waits for ingestion while the journal is larger than this (back-pressure).
MAX_JOURNAL_BYTES = 512 * 1024 * 1024
#: The writer thread waits this long after a measurement arrives for more to commit with it,
#: unless LINGER_BYTES of payload are already waiting (ingestion lags the replies by this much;
#: durability does not depend on it: the journal has every acknowledged measurement).
INGEST_LINGER_S = 0.1
LINGER_BYTES = 16 * 1024 * 1024
#: Distinct recent thetas per system that ``record`` compares a theta with (journaling a
#: reference instead of the bytes when one is equal); thetas larger than THETA_CACHE_BYTES are
#: always written whole (no copy is kept).
THETA_CACHE = 4
THETA_CACHE_BYTES = 4 * 1024 * 1024
#: Seconds between two attempts to commit a group that failed.
RETRY_S = 1.0
PACKAGES = ("labd", "numpy", "torch", "pyzmq", "pydantic")

_INSERT = """INSERT INTO measurements (run, system, seq, rows, client, request_id, received,
    done, elapsed_s, x_shape, theta_shape, y_shape, theta_id, x, y)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UNRECORDED = """INSERT INTO unrecorded VALUES (?, 1, ?) ON CONFLICT(system)
    DO UPDATE SET requests = requests + 1, rows = rows + excluded.rows"""
_COUNTER = """INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?"""


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


def _blob(a: np.ndarray) -> memoryview:
    """The array's bytes as little-endian float32, without a copy when it already is."""
    return memoryview(np.ascontiguousarray(a, dtype="<f4")).cast("B")


_EMPTY = memoryview(b"")


@dataclass(slots=True)
class _Pending:
    """One journaled write waiting for ingestion into SQLite."""

    row: tuple[Any, ...] | None = None  # a measurement: (meta, x, theta, y), see ``_rows``
    reserve: tuple[str, int] | None = None  # (system, rows) of an unrecorded measurement
    end: int = 0  # seq + rows
    nbytes: int = 0
    offset: int = 0  # journal offset after this entry


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


def _theta_id(conn: sqlite3.Connection, theta: Any) -> int:
    """The ``thetas`` row holding these bytes, inserted if there is none."""
    digest = schema.theta_digest(theta)
    row = conn.execute("SELECT id FROM thetas WHERE digest = ?", (digest,)).fetchone()
    if row is not None:
        return int(row[0])
    cur = conn.execute("INSERT INTO thetas (digest, theta) VALUES (?, ?)", (digest, theta))
    return int(cur.lastrowid)  # type: ignore[arg-type]


def _rows(conn: sqlite3.Connection, items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The ``measurements`` rows of journal entries ``(meta, x, theta, y)`` in journal order,
    inside the caller's transaction: a carried theta is filed (``_theta_id``); a reference
    (``meta["theta_seq"]``) resolves to the theta of that measurement, earlier in ``items`` or
    already in the database (see the fence in ``Store``)."""
    ids: dict[int, int] = {}  # seq -> theta id, of this transaction
    rows = []
    for meta, x, theta, y in items:
        ref = meta.get("theta_seq")
        if ref is None:
            tid = _theta_id(conn, theta)
        elif (tid := ids.get(ref)) is None:  # type: ignore[assignment]
            found = conn.execute("SELECT theta_id FROM measurements WHERE seq = ?",
                                 (ref,)).fetchone()
            if found is None:
                raise StoreError(f"measurement {meta['seq']} refers to the theta of "
                                 f"measurement {ref}, which the store lacks")
            tid = int(found[0])
        ids[meta["seq"]] = tid
        rows.append((meta["run"], meta["system"], meta["seq"], meta["rows"], meta["client"],
                     meta["request_id"], meta["received"], meta["done"], meta["elapsed_s"],
                     json.dumps(meta["x_shape"]), json.dumps(meta["theta_shape"]),
                     json.dumps(meta["y_shape"]), tid, x, y))
    return rows


def _counter(conn: sqlite3.Connection, name: str, default: int) -> int:
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return default if row is None else int(row[0])


def _ingest(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
            reserved: list[tuple[str, int]], end: int, epoch: int, offset: int) -> None:
    """One transaction: measurements (``(meta, x, theta, y)`` of journal entries, in journal
    order) and their new thetas, unrecorded counts, high-water mark, journal position."""
    conn.execute("BEGIN")
    try:
        if rows:
            conn.executemany(_INSERT, _rows(conn, rows))
        if reserved:
            conn.executemany(_UNRECORDED, reserved)
        conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'next_seq'",
                     (end,))
        conn.executemany(_COUNTER, [("journal_epoch", epoch, epoch),
                                    ("journal_offset", offset, offset)])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def recover(conn: sqlite3.Connection, journal: Journal, fsync: bool = False) -> int:
    """Ingest the journal entries the database lacks (a crashed writer's), then empty the
    journal under a new epoch; return the number of entries ingested."""
    epoch = _counter(conn, "journal_epoch", -1)
    start = _counter(conn, "journal_offset", 0) if journal.epoch == epoch else 0
    rows: list[tuple[Any, ...]] = []
    reserved: list[tuple[str, int]] = []
    end, size, done, offset = 0, 0, 0, start
    for entry in journal.entries(start):  # committed in groups of at most MAX_GROUP_BYTES
        meta = entry.meta
        if meta["kind"] == "measurement":
            rows.append((meta, entry.x, entry.theta, entry.y))
            size += len(entry.x) + len(entry.theta) + len(entry.y)
        else:
            reserved.append((meta["system"], meta["rows"]))
        end = max(end, meta["seq"] + meta["rows"])
        if size >= MAX_GROUP_BYTES:
            _ingest(conn, rows, reserved, end, journal.epoch, entry.end)
            done += len(rows) + len(reserved)
            rows, reserved, size = [], [], 0
        offset = entry.end
    if rows or reserved:
        _ingest(conn, rows, reserved, end, journal.epoch, offset)
        done += len(rows) + len(reserved)
    if done:
        log.warning("store: recovered %d entries from the journal of a writer that died", done)
    fresh = max(epoch, journal.epoch) + 1
    journal.reset(fresh, fsync)  # the file first: a crash now replays nothing
    _ingest(conn, [], [], 0, fresh, journal.end)
    return done


def _unreplayed(conn: sqlite3.Connection, journal: Journal) -> bool:
    """Whether the journal holds records the database has not ingested."""
    epoch = _counter(conn, "journal_epoch", -1)
    start = _counter(conn, "journal_offset", 0) if journal.epoch == epoch else 0
    return next(journal.entries(start), None) is not None


def recover_path(path: str | Path) -> int:
    """Replay the journal of the store at ``path`` if a crashed writer left one and no live
    process writes the store (what ``StoreReader`` calls on opening); return entries ingested.
    """
    p = Path(path).expanduser()
    jpath = journal_path(p)
    if not jpath.exists() or jpath.stat().st_size == 0:
        return 0
    try:
        journal = Journal.open(jpath)
    except JournalBusy:
        return 0  # a live daemon ingests it
    try:
        conn = connect(p)
        try:
            return recover(conn, journal) if _unreplayed(conn, journal) else 0
        finally:
            conn.close()
    finally:
        journal.close()


def connect(path: str | Path, synchronous: Synchronous = "normal") -> sqlite3.Connection:
    """Open (creating if needed) the store file in WAL mode, its schema upgraded."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if schema.version(conn) == 0:  # only settable before the first table exists
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"{p}: cannot use WAL mode (got {mode!r}); is it on a network file "
                         f"system?")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
    old = schema.upgrade(conn)
    if 0 < old < schema.SCHEMA_VERSION:
        log.info("%s: schema upgraded from version %d to %d", p, old, schema.SCHEMA_VERSION)
    return conn


class Store:
    def __init__(self, path: str | Path, synchronous: Synchronous = "normal",
                 max_bytes: int = 0, max_age_days: float = 0.0,
                 prune_interval_s: float = 600.0) -> None:
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self.prune_interval_s = prune_interval_s
        self._conn = connect(self.path, synchronous)
        self._fsync = synchronous == "full"
        try:
            self._journal = Journal.open(journal_path(self.path))
        except JournalBusy as exc:
            self._conn.close()
            raise StoreError(str(exc)) from None
        try:
            recover(self._conn, self._journal, self._fsync)
        except BaseException:
            self._journal.close()
            self._conn.close()
            raise
        self._next_seq = int(self._conn.execute(
            "SELECT max(coalesce((SELECT value FROM counters WHERE name = 'next_seq'), 0), "
            "coalesce((SELECT seq + rows FROM measurements ORDER BY seq DESC LIMIT 1), 0))"
        ).fetchone()[0])
        self._claims = _Claims(self._next_seq)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._queued = 0  # payload bytes queued for the writer thread (under _lock)
        self._flush = threading.Event()  # ends the writer's linger early
        # Orders journal appends, queue puts and close(); the writer notifies on progress.
        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)
        self._ingested = self._journal.end  # journal offset up to which SQLite has it
        #: Per system, the last THETA_CACHE distinct thetas journaled since the last fence,
        #: newest first: (bytes, seq of the measurement that carried them). Under _lock.
        self._thetas: dict[str, list[tuple[bytes, int]]] = {}
        self._closed = False
        self._run: int | None = None
        self._thread = threading.Thread(target=self._write_loop, name="labd-store", daemon=True)
        # Checkpoints (copying the WAL into the main file, with an fsync) run on their own
        # connection and thread, every CHECKPOINT_BYTES of payload: a commit never waits for
        # one, and the WAL restarts from its start instead of growing without bound.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._since_checkpoint = 0
        self._checkpoint_conn = connect(self.path, synchronous)
        self._checkpoint_wanted = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="labd-store-checkpoint", daemon=True)

    # -- Recorder -----------------------------------------------------------------------------

    def next_seq(self) -> int:
        return self._next_seq

    def recent(self, limit: int) -> list[Reply]:
        """The last ``limit`` recorded measurements as the replies they produced, oldest
        first: the daemon re-fills its reply cache with them at start, so a client that
        retries a request across a crash and restart gets the recorded reply instead of a
        second measurement."""
        rows = self._conn.execute(
            "SELECT client, request_id, seq, elapsed_s, y_shape, y FROM measurements "
            "ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [Reply(client, rid, seq, elapsed,
                      np.frombuffer(y, dtype="<f4").reshape(json.loads(shape)))
                for client, rid, seq, elapsed, shape, y in reversed(rows)]

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
        self._checkpointer.start()

    def record(self, m: Measurement) -> None:
        if self._run is None:
            raise StoreError("record before start_run")
        x, theta, y = _blob(m.x), _blob(m.theta), _blob(m.y)
        # A copy to compare later thetas with (bytes == bytes is a memcmp; comparing with a
        # memoryview goes element by element): ~12 us at 256 KiB.
        copy = bytes(theta) if theta.nbytes <= THETA_CACHE_BYTES else None
        rows = m.x.shape[0]
        meta = {"kind": "measurement", "run": self._run, "system": m.system, "seq": m.seq,
                "rows": rows, "client": m.client, "request_id": m.request_id,
                "received": m.received, "done": m.done, "elapsed_s": m.elapsed_s,
                "x_shape": list(m.x.shape), "theta_shape": list(m.theta.shape),
                "y_shape": list(m.y.shape)}
        self._submit(meta, (x, theta, y), _Pending(
            row=(meta, x, theta, y), end=m.seq + rows,
            nbytes=x.nbytes + theta.nbytes + y.nbytes), copy)

    def reserve(self, system: str, seq: int, rows: int) -> None:
        if self._run is None:
            raise StoreError("reserve before start_run")
        meta = {"kind": "reserve", "system": system, "seq": seq, "rows": rows}
        self._submit(meta, (_EMPTY, _EMPTY, _EMPTY),
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
        if self._checkpointer.is_alive():
            self._checkpoint_wanted.set()
            self._checkpointer.join()
        if self._ingested != self._journal.end:  # commits kept failing
            log.error("store: %d journal bytes not ingested; the next opening of the store "
                      "replays them", self._journal.end - self._ingested)
        self._journal.close()
        self._checkpoint_conn.close()
        self._conn.close()

    # -- callers' side ------------------------------------------------------------------------

    def _submit(self, meta: dict[str, Any], arrays: tuple[memoryview, memoryview, memoryview],
                pending: _Pending, theta: bytes | None = None) -> None:
        seq, rows = meta["seq"], meta["rows"]
        with self._lock:
            while (self._journal.end - self._ingested > MAX_JOURNAL_BYTES
                   and not self._closed):
                self._progress.wait()
            if self._closed:
                raise StoreError("the store is closed")
            if not self._claims.claim(seq, seq + rows):
                raise StoreError(f"measurement not stored: UNIQUE constraint failed: numbers "
                                 f"{seq}..{seq + rows - 1} overlap numbers already recorded")
            seen = None
            if theta is not None:
                seen = self._thetas.setdefault(meta["system"], [])
                for i, (known, carrier) in enumerate(seen):
                    if known == theta:  # journal a reference instead of the bytes
                        seen.insert(0, seen.pop(i))
                        meta["theta_seq"] = carrier
                        x, _, y = arrays
                        arrays = (x, _EMPTY, y)
                        pending.row = (meta, x, _EMPTY, y)
                        pending.nbytes = x.nbytes + y.nbytes
                        seen = None
                        break
            try:
                pending.offset = self._journal.append(meta, *arrays, fsync=self._fsync)
            except OSError as exc:
                raise StoreError(f"measurement not stored: {exc}") from exc
            if seen is not None:  # carried: later equal thetas refer to this measurement
                seen.insert(0, (theta, seq))  # type: ignore[arg-type]
                del seen[THETA_CACHE:]
            self._queue.put(pending)
            self._queued += pending.nbytes
            if self._queued >= LINGER_BYTES:
                self._flush.set()

    # -- the writer thread --------------------------------------------------------------------

    def _fence(self) -> None:
        """Queue a prune after everything journaled so far (see the class contract); later
        records carry their thetas again."""
        with self._lock:
            self._thetas.clear()
            self._queue.put(_FENCE)

    def _write_loop(self) -> None:
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
            # same transaction. The journal already holds every item durably; fewer, larger
            # commits rewrite the table's, the indexes' and the counters' pages (64 KiB each)
            # once per group instead of once per measurement, in the WAL and at checkpoint.
            # The thread sleeps meanwhile instead of waking for every item (``_submit`` and
            # ``close`` cut the sleep short).
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
                return  # closing while commits fail: the journal keeps the rest for replay
            if self._since_checkpoint >= CHECKPOINT_BYTES:
                self._since_checkpoint = 0
                self._checkpoint_wanted.set()
            if fenced:
                self._prune()
                next_prune = time.monotonic() + self.prune_interval_s
            elif pruning and time.monotonic() >= next_prune:
                self._fence()
                next_prune = math.inf  # until the fence is dequeued

    def _commit(self, group: list[_Pending]) -> bool:
        """Ingest ``group`` (in journal order), retrying every ``RETRY_S`` while it fails; then
        empty the journal if everything in it is ingested and it has grown large. False if the
        store closed while the commit kept failing."""
        rows = [p.row for p in group if p.row is not None]
        reserved = [p.reserve for p in group if p.reserve is not None]
        if not (rows or reserved):
            return True
        offset = max(p.offset for p in group)
        while True:
            try:
                _ingest(self._conn, rows, reserved, max(p.end for p in group),
                        self._journal.epoch, offset)
                break
            except (sqlite3.Error, StoreError):
                log.exception("store: cannot commit %d measurements (kept in the journal; "
                              "retrying in %g s)", len(group), RETRY_S)
                if self._closed:
                    return False
                time.sleep(RETRY_S)
        self._since_checkpoint += sum(p.nbytes for p in group)
        with self._lock:  # no append can run meanwhile
            self._ingested = offset
            if offset == self._journal.end >= JOURNAL_RESET_BYTES:
                fresh = self._journal.epoch + 1
                self._journal.reset(fresh, self._fsync)  # a crash now replays nothing
                self._ingested = self._journal.end
                with contextlib.suppress(sqlite3.Error):  # if it fails: replay finds nothing
                    _ingest(self._conn, [], [], 0, fresh, self._ingested)
            self._progress.notify_all()
        return True

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL frames into the main file when asked (PASSIVE: never blocks the
        writer), until the store closes."""
        while True:
            self._checkpoint_wanted.wait()
            self._checkpoint_wanted.clear()
            if self._closed:
                return
            try:
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.exception("store: checkpoint failed")

    def _prune(self) -> None:
        """Delete measurements beyond the age and size limits, and the thetas no measurement
        refers to any more, in one transaction (in this thread, at a fence)."""
        if not (self.max_age_days or self.max_bytes):
            return
        conn = self._conn
        try:
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
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if deleted:
                conn.executescript("PRAGMA incremental_vacuum")  # execute() frees one page
                log.info("store: pruned %d measurements and %d thetas", deleted, dropped)
        except sqlite3.Error:
            log.exception("store: pruning failed")

    def _prune_size(self, thetas: set[int]) -> int:
        """Delete the oldest measurements until the used pages fit ``max_bytes`` (estimated:
        a theta counts as freed with the first deleted measurement that refers to it); add
        the thetas they referred to to ``thetas``."""
        conn = self._conn
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = page * (conn.execute("PRAGMA page_count").fetchone()[0]
                       - conn.execute("PRAGMA freelist_count").fetchone()[0])
        excess = used - self.max_bytes
        if excess <= 0:
            return 0
        freed, cutoff, seen = 0, None, set()
        cur = conn.execute("SELECT id, length(x) + length(y), theta_id FROM measurements "
                           "ORDER BY id")
        for mid, size, tid in cur:
            freed += size + ROW_OVERHEAD
            if tid not in seen:
                seen.add(tid)
                freed += conn.execute("SELECT length(theta) FROM thetas WHERE id = ?",
                                      (tid,)).fetchone()[0]
            cutoff = mid
            if freed >= excess:
                break
        cur.close()
        if cutoff is None:
            return 0
        thetas.update(seen)
        return conn.execute("DELETE FROM measurements WHERE id <= ?", (cutoff,)).rowcount


def open_store(path: str | Path, options: StoreConfig | None = None) -> Store:
    """The daemon's recorder at ``path`` with the ``[store]`` table's options (defaults if
    None)."""
    if options is None:
        return Store(path)
    return Store(path, synchronous=options.synchronous, max_bytes=options.max_bytes,
                 max_age_days=options.max_age_days,
                 prune_interval_s=options.prune_interval_s)
