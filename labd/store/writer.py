"""The store's writer: the daemon's ``Recorder``, one SQLite file, one writer thread.

Why SQLite in WAL mode: one file, no server, readable by every language, transactional, and a
reader (``labd data``, the trainer) never blocks the writer nor sees a half-written
measurement. In WAL mode a commit is an append to the ``-wal`` file; QCoDeS and most lab data
loggers settle on the same choice. HDF5 has no crash-safe transactions (a killed writer can
leave the file unreadable); a directory of ``.npy`` files has no atomic metadata and no queries.

Guarantee (``synchronous = "normal"``, the default): ``record()`` returns only after the
transaction holding the measurement has committed, i.e. its WAL frames were ``write()``-n to
the operating system. The worker sends the reply after ``record()`` returns, so **every
measurement whose reply reached a client is in the store after the daemon process dies in any
way, ``kill -9`` included** (the OS still holds the written pages). It is *not* durable against
power loss or an OS crash: the last commits before one may be lost (the file stays consistent;
SQLite rolls back to an earlier commit). ``synchronous = "full"`` fsyncs the WAL at every
commit, which extends the guarantee to power loss at the cost of one fsync per group commit.

Contract:

* ``Store(path, synchronous=, max_bytes=, max_age_days=, prune_interval_s=)`` creates or
  opens the file, upgrades its schema (``labd.store.schema``) and reads the sequence
  high-water mark; ``next_seq()`` returns it: max(seq + rows) over stored measurements and the
  persisted ``next_seq`` counter, which also covers pruned rows and systems with
  ``record = false`` (see ``reserve``). Sequence numbers therefore never repeat across restarts.
* ``start_run(config, devices)`` stores the run record (full config JSON, package versions,
  ``describe()`` of every system: no hidden parameter) and starts the writer thread.
* ``record(m)`` (any thread, concurrently) queues the measurement and blocks until the writer
  thread has committed the group holding it (group commit: one transaction, one
  ``executemany`` per group of whatever arrived meanwhile). The arrays are bound as
  memoryviews of the request's buffers, not copied in Python. Raises ``StoreError`` if the
  commit failed or the store is closed.
* ``reserve(system, seq, rows)``: the same for a measurement of an unrecorded system: only the
  high-water mark and the system's unrecorded counts are committed.
* Growth: with ``max_age_days`` measurements received earlier are deleted; with ``max_bytes``
  the oldest measurements are deleted until the database's used pages fit. **Pruning deletes
  data.** It runs in the writer thread at start and every ``prune_interval_s``, never per
  request; freed pages are returned to the file system (incremental auto-vacuum).
* ``close()`` commits what is queued, stops the thread and closes the file (checkpointing the
  WAL into the main file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import queue
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from labd.config import StoreConfig
from labd.daemon.recording import Measurement
from labd.store import schema

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
PACKAGES = ("labd", "numpy", "torch", "pyzmq", "pydantic")

_INSERT = """INSERT INTO measurements (run, system, seq, rows, client, request_id, received,
    done, elapsed_s, x_shape, theta_shape, y_shape, x, theta, y)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UNRECORDED = """INSERT INTO unrecorded VALUES (?, 1, ?) ON CONFLICT(system)
    DO UPDATE SET requests = requests + 1, rows = rows + excluded.rows"""


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


@dataclass(slots=True)
class _Pending:
    """One queued write and the event its caller waits on."""

    row: tuple[Any, ...] | None = None  # a measurement
    reserve: tuple[str, int] | None = None  # (system, rows) of an unrecorded measurement
    end: int = 0  # seq + rows
    nbytes: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


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
        self._next_seq = int(self._conn.execute(
            "SELECT max(coalesce((SELECT value FROM counters WHERE name = 'next_seq'), 0), "
            "coalesce((SELECT seq + rows FROM measurements ORDER BY seq DESC LIMIT 1), 0))"
        ).fetchone()[0])
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders close() after every accepted put
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
        rows = m.x.shape[0]
        self._submit(_Pending(
            row=(self._run, m.system, m.seq, rows, m.client, m.request_id, m.received, m.done,
                 m.elapsed_s, json.dumps(m.x.shape), json.dumps(m.theta.shape),
                 json.dumps(m.y.shape), x, theta, y),
            end=m.seq + rows, nbytes=x.nbytes + theta.nbytes + y.nbytes))

    def reserve(self, system: str, seq: int, rows: int) -> None:
        if self._run is None:
            raise StoreError("reserve before start_run")
        self._submit(_Pending(reserve=(system, rows), end=seq + rows))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        if self._checkpointer.is_alive():
            self._checkpoint_wanted.set()
            self._checkpointer.join()
        self._checkpoint_conn.close()
        self._conn.close()

    # -- callers' side ------------------------------------------------------------------------

    def _submit(self, pending: _Pending) -> None:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise StoreError(f"measurement not stored: {pending.error}") from pending.error

    # -- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        self._prune()
        next_prune = time.monotonic() + self.prune_interval_s
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=max(0.0, next_prune - time.monotonic()))
            except queue.Empty:
                first = _Pending()  # nothing to write: just prune
            if first is None:
                break
            group = [first]
            size = first.nbytes
            while len(group) < MAX_GROUP and size < MAX_GROUP_BYTES:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
                size += item.nbytes
            self._commit(group)
            if self._since_checkpoint >= CHECKPOINT_BYTES:
                self._since_checkpoint = 0
                self._checkpoint_wanted.set()
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self.prune_interval_s

    def _commit(self, group: list[_Pending]) -> None:
        conn = self._conn
        rows = [p.row for p in group if p.row is not None]
        reserved = [p.reserve for p in group if p.reserve is not None]
        try:
            if rows or reserved:
                conn.execute("BEGIN")
                if rows:
                    conn.executemany(_INSERT, rows)
                if reserved:
                    conn.executemany(_UNRECORDED, reserved)
                conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'next_seq'",
                             (max(p.end for p in group),))
                conn.execute("COMMIT")
                self._since_checkpoint += sum(p.nbytes for p in group)
        except BaseException as exc:  # every waiter learns of the failure; the thread goes on
            log.exception("store: cannot commit %d measurements", len(group))
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for p in group:
                p.error = exc
        finally:
            for p in group:
                p.done.set()

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
        """Delete measurements beyond the age and size limits (in this thread)."""
        if not (self.max_age_days or self.max_bytes):
            return
        conn = self._conn
        try:
            deleted = 0
            if self.max_age_days:
                cutoff = time.time() - self.max_age_days * 86400.0
                deleted += conn.execute("DELETE FROM measurements WHERE received < ?",
                                        (cutoff,)).rowcount
            if self.max_bytes:
                deleted += self._prune_size()
            if deleted:
                conn.executescript("PRAGMA incremental_vacuum")  # execute() frees one page
                log.info("store: pruned %d measurements", deleted)
        except sqlite3.Error:
            log.exception("store: pruning failed")

    def _prune_size(self) -> int:
        conn = self._conn
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = page * (conn.execute("PRAGMA page_count").fetchone()[0]
                       - conn.execute("PRAGMA freelist_count").fetchone()[0])
        excess = used - self.max_bytes
        if excess <= 0:
            return 0
        freed, cutoff = 0, None
        cur = conn.execute("SELECT id, length(x) + length(theta) + length(y) FROM measurements "
                           "ORDER BY id")
        for mid, size in cur:
            freed += size + ROW_OVERHEAD
            cutoff = mid
            if freed >= excess:
                break
        cur.close()
        if cutoff is None:
            return 0
        return conn.execute("DELETE FROM measurements WHERE id <= ?", (cutoff,)).rowcount


def open_store(path: str | Path, options: StoreConfig | None = None) -> Store:
    """The daemon's recorder at ``path`` with the ``[store]`` table's options (defaults if
    None)."""
    if options is None:
        return Store(path)
    return Store(path, synchronous=options.synchronous, max_bytes=options.max_bytes,
                 max_age_days=options.max_age_days,
                 prune_interval_s=options.prune_interval_s)
