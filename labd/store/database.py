"""The store's SQLite database: its layout, connections and transactions.

* Layout: ``INITIAL``, then the steps of ``labd.store.upgrades``. A store file carries SQLite
  ``application_id`` ``APPLICATION_ID`` and its layout version in ``user_version`` (1 is
  ``INITIAL``; step N brings N - 1 to N). Arrays live in segment files (``segments``): rows
  hold their offsets, shapes as JSON lists.
* ``connect(path, synchronous)``: the writer's connection (holding the ring's lock):
  autocommit, WAL, ``synchronous`` "normal" (a commit survives the process) or "full" (also
  power loss). It creates or upgrades the layout, each step in one transaction with its version
  number; a newer file, or an SQLite file that is not a store, raises ``SchemaError``.
* ``connect_readonly(path)``: a reader's, beside a live writer, for the layout this code reads.
* ``transaction(conn, segments)``: with a ``SegmentWriter``, its new sizes commit in the same
  transaction (the bytes synced first) and a failure cuts its new bytes off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from labd.store import upgrades
from labd.store.segments import SegmentWriter

log = logging.getLogger("labd.store")

APPLICATION_ID = 0x4C414244  # "LABD"
INITIAL = """
    -- one row per daemon start (versions, config and devices: JSON)
    CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, versions TEXT NOT NULL, config TEXT NOT NULL,
        devices TEXT NOT NULL);
    -- the committed size of each segment file
    CREATE TABLE segments (id INTEGER PRIMARY KEY, bytes INTEGER NOT NULL);
    -- each distinct theta once, by its digest (theta_digest)
    CREATE TABLE thetas (id INTEGER PRIMARY KEY, digest BLOB NOT NULL,
        segment INTEGER NOT NULL, offset INTEGER NOT NULL, bytes INTEGER NOT NULL);
    CREATE UNIQUE INDEX thetas_digest ON thetas(digest);
    CREATE INDEX thetas_segment ON thetas(segment);
    -- one row per forward request, its rows numbered seq .. seq + rows - 1 (times: UNIX s)
    CREATE TABLE measurements (id INTEGER PRIMARY KEY, run INTEGER NOT NULL REFERENCES runs(id),
        system TEXT NOT NULL, seq INTEGER NOT NULL, rows INTEGER NOT NULL,
        client TEXT NOT NULL, request_id TEXT NOT NULL, received REAL NOT NULL,
        done REAL NOT NULL, elapsed_s REAL NOT NULL, x_shape TEXT NOT NULL,
        theta_shape TEXT NOT NULL, y_shape TEXT NOT NULL, theta_id INTEGER NOT NULL,
        segment INTEGER NOT NULL, x_offset INTEGER NOT NULL, x_bytes INTEGER NOT NULL,
        y_offset INTEGER NOT NULL, y_bytes INTEGER NOT NULL);
    CREATE UNIQUE INDEX measurements_seq ON measurements(seq);
    CREATE INDEX measurements_system_received ON measurements(system, received);
    CREATE INDEX measurements_received ON measurements(received);
    CREATE INDEX measurements_run ON measurements(run);
    CREATE INDEX measurements_theta ON measurements(theta_id);
    CREATE INDEX measurements_segment ON measurements(segment);
    -- next_seq: the sequence high-water mark, ring_position: what is ingested of the ring
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO counters VALUES ('next_seq', 0), ('ring_position', 0);
    -- forwards of systems with record = false
    CREATE TABLE unrecorded (system TEXT PRIMARY KEY, requests INTEGER NOT NULL,
        rows INTEGER NOT NULL)
"""
Synchronous = Literal["normal", "full"]
PAGE_SIZE = 4096  # of new files: the rows are small
WAL_LIMIT_BYTES = 64 * 1024 * 1024  # the WAL is cut back to this after a burst
BUSY_TIMEOUT_MS = 10000


class SchemaError(Exception):
    """A store file this code cannot read (newer layout, or not a labd store)."""


class StoreError(Exception):
    """The store cannot do what was asked (measurement not stored, store closed or busy)."""


def theta_digest(theta: bytes | memoryview) -> bytes:
    return hashlib.sha256(theta).digest()


def latest() -> int:
    return 1 + len(upgrades.STEPS)


def version(conn: sqlite3.Connection) -> int:
    """The file's layout version (0 for an empty file)."""
    if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
        raise SchemaError("not a labd measurement store (another program's SQLite file)")
    return 0


def prepare(conn: sqlite3.Connection) -> int:
    """Create or upgrade the layout; return the version the file had."""
    if (old := version(conn)) > latest():
        raise SchemaError(f"store layout version {old} is newer than this labd reads "
                          f"({latest()}); upgrade labd")
    for to in range(old + 1, latest() + 1):
        with transaction(conn):
            if to == 1:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                for statement in INITIAL.split(";"):  # executescript would commit
                    conn.execute(statement)
            else:
                upgrades.STEPS[to](conn)
            conn.execute(f"PRAGMA user_version = {to}")
    return old


def connect(path: Path, synchronous: Synchronous = "normal") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if version(conn) == 0:  # only settable before the first table exists
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: cannot use WAL mode (got {mode!r}); is it on a network "
                             f"file system?")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
        if 0 < (old := prepare(conn)) < latest():
            log.info("%s: layout upgraded from version %d to %d", path, old, latest())
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if (found := version(conn)) != latest():
            raise SchemaError(f"{path} has layout version {found}; this labd reads {latest()} "
                              f"(its daemon upgrades it)")
    except BaseException:
        conn.close()
        raise
    return conn


def counter(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, segments: SegmentWriter | None = None
                ) -> Iterator[sqlite3.Connection]:
    mark = (segments.segment, segments.end) if segments else None
    conn.execute("BEGIN")
    try:
        yield conn
        if segments is not None:
            conn.executemany("INSERT INTO segments VALUES (?, ?) ON CONFLICT(id) DO UPDATE "
                             "SET bytes = excluded.bytes", segments.sizes())
            segments.sync()  # "full": the bytes are on disk before rows refer to them
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if segments is not None and mark is not None:
            with contextlib.suppress(OSError):
                segments.rollback(mark)
        raise
    if segments is not None:
        segments.committed()
