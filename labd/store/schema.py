"""The measurement store's SQLite schema and its step upgrades.

Contract:

* ``SCHEMA_VERSION`` is the layout this code writes and reads. ``upgrade(conn)`` brings a file
  of any older version (0 = empty file) to it, one step at a time, each step in its own
  transaction together with the new version number, so an interrupted upgrade leaves the file
  at the previous version. A file newer than this code raises ``SchemaError``.
* ``STEPS[v]`` upgrades version ``v`` to ``v + 1``. A new layout adds a step; published steps
  never change (old files in the field were written by them).

Layout (version 4)::

    schema_version(version)                     one row
    runs(id, started, host, pid, versions, config, devices)
                                                one per daemon start; JSON texts
    segments(id, bytes)                         the segment files (``labd.store.segments``)
                                                and their committed sizes
    thetas(id, digest, segment, offset, bytes)  each distinct theta once: raw little-endian
                                                float32 bytes at ``offset`` of segment
                                                ``segment``, digest = theta_digest(theta)
                                                (unique)
    measurements(id, run, system, seq, rows, client, request_id, received, done, elapsed_s,
                 x_shape, theta_shape, y_shape, theta_id, segment, x_offset, x_bytes,
                 y_offset, y_bytes)
                                                one per forward request; x and y raw
                                                little-endian float32 in segment ``segment``,
                                                shapes JSON lists, theta_id the thetas row of
                                                its theta (theta [P] is one theta for every
                                                row; the shape is the measurement's)
    counters(name, value)                       'next_seq': sequence high-water mark;
                                                'ring_position': what is ingested from the
                                                journal ring (``labd.store.ring``)
    unrecorded(system, requests, rows)          forwards of systems with record = false

Version 1 had no ``counters`` (the high-water mark was max(seq + rows), lost when pruning
deleted the newest rows) and no ``unrecorded`` table. Version 2 stored every measurement's
theta in its row (a ``measurements.theta`` blob between ``x`` and ``y``), although
nearly every request of a training minibatch or an evaluation pass repeats the previous one's:
a third of the bytes of a request with equal-sized arrays, copied four times (journal, SQLite
bind, WAL, checkpoint). The step to version 3 moves the distinct thetas into ``thetas`` and
rebuilds ``measurements`` (its rows copied once, in one transaction: the file grows by the
table's size until the freed pages are reused). Version 3 kept ``x``, ``y`` and
``thetas.theta`` as blobs (the last columns, so metadata queries did not read them), copied
three times by SQLite after the journal; its counters ``journal_epoch`` and
``journal_offset`` located the ingested part of the old journal (``labd.store.journal``). The
step to version 4 writes every blob into segment files next to the database (fsynced before
the transaction commits; segment files left by an interrupted attempt are overwritten) and
rebuilds ``thetas`` and ``measurements`` with references instead; the file keeps its size
until SQLite reuses the freed pages (``labd.store.writer`` vacuums incrementally when it
prunes).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from labd.store import segments as seg

SCHEMA_VERSION = 4


def theta_digest(theta: bytes | memoryview) -> bytes:
    """The ``thetas.digest`` of a theta's raw bytes (SHA-256: 0.25 ms per 256 KiB here, half
    of BLAKE2b's; computed by the writer thread, once per distinct theta it stores)."""
    return hashlib.sha256(theta).digest()


class SchemaError(Exception):
    """A store file this code cannot read (newer schema, or not a labd store)."""


def _script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction (``executescript``
    would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    _script(conn, """
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (0);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            started REAL NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            versions TEXT NOT NULL,
            config TEXT NOT NULL,
            devices TEXT NOT NULL
        );
        CREATE TABLE measurements (
            id INTEGER PRIMARY KEY,
            run INTEGER NOT NULL REFERENCES runs(id),
            system TEXT NOT NULL,
            seq INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            client TEXT NOT NULL,
            request_id TEXT NOT NULL,
            received REAL NOT NULL,
            done REAL NOT NULL,
            elapsed_s REAL NOT NULL,
            x_shape TEXT NOT NULL,
            theta_shape TEXT NOT NULL,
            y_shape TEXT NOT NULL,
            x BLOB NOT NULL,
            theta BLOB NOT NULL,
            y BLOB NOT NULL
        );
        CREATE UNIQUE INDEX measurements_seq ON measurements(seq);
        CREATE INDEX measurements_system_received ON measurements(system, received);
        CREATE INDEX measurements_received ON measurements(received);
        CREATE INDEX measurements_run ON measurements(run);
    """)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    _script(conn, """
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters
            SELECT 'next_seq', coalesce(max(seq + rows), 0) FROM measurements;
        CREATE TABLE unrecorded (
            system TEXT PRIMARY KEY,
            requests INTEGER NOT NULL,
            rows INTEGER NOT NULL
        );
    """)


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    conn.create_function("labd_theta_digest", 1, theta_digest, deterministic=True)
    _script(conn, """
        CREATE TABLE thetas (
            id INTEGER PRIMARY KEY,
            digest BLOB NOT NULL,
            theta BLOB NOT NULL
        );
        CREATE UNIQUE INDEX thetas_digest ON thetas(digest);
        CREATE TEMP TABLE v3_digests (id INTEGER PRIMARY KEY, digest BLOB NOT NULL);
        INSERT INTO v3_digests SELECT id, labd_theta_digest(theta) FROM measurements;
        INSERT INTO thetas (digest, theta)
            SELECT d.digest, m.theta FROM v3_digests d JOIN measurements m ON m.id = d.id
            WHERE true ORDER BY d.id ON CONFLICT(digest) DO NOTHING;
        CREATE TABLE measurements_v3 (
            id INTEGER PRIMARY KEY,
            run INTEGER NOT NULL REFERENCES runs(id),
            system TEXT NOT NULL,
            seq INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            client TEXT NOT NULL,
            request_id TEXT NOT NULL,
            received REAL NOT NULL,
            done REAL NOT NULL,
            elapsed_s REAL NOT NULL,
            x_shape TEXT NOT NULL,
            theta_shape TEXT NOT NULL,
            y_shape TEXT NOT NULL,
            theta_id INTEGER NOT NULL REFERENCES thetas(id),
            x BLOB NOT NULL,
            y BLOB NOT NULL
        );
        INSERT INTO measurements_v3
            SELECT m.id, m.run, m.system, m.seq, m.rows, m.client, m.request_id, m.received,
                   m.done, m.elapsed_s, m.x_shape, m.theta_shape, m.y_shape, t.id, m.x, m.y
            FROM measurements m JOIN v3_digests d ON d.id = m.id
                 JOIN thetas t ON t.digest = d.digest
            ORDER BY m.id;
        DROP TABLE v3_digests;
        DROP TABLE measurements;
        ALTER TABLE measurements_v3 RENAME TO measurements;
        CREATE UNIQUE INDEX measurements_seq ON measurements(seq);
        CREATE INDEX measurements_system_received ON measurements(system, received);
        CREATE INDEX measurements_received ON measurements(received);
        CREATE INDEX measurements_run ON measurements(run);
        CREATE INDEX measurements_theta ON measurements(theta_id)
    """)


def database_path(conn: sqlite3.Connection) -> Path:
    """The file of ``conn``'s main database."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file)
    raise SchemaError("no main database")


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    directory = seg.blobs_dir(database_path(conn))
    for path in seg.segment_files(directory).values():  # an interrupted attempt's
        path.unlink()
    writer = seg.SegmentWriter(directory, 1, 0, fsync=True)
    _script(conn, """
        CREATE TABLE segments (id INTEGER PRIMARY KEY, bytes INTEGER NOT NULL);
        CREATE TABLE thetas_v4 (
            id INTEGER PRIMARY KEY,
            digest BLOB NOT NULL,
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            bytes INTEGER NOT NULL
        );
        CREATE TABLE measurements_v4 (
            id INTEGER PRIMARY KEY,
            run INTEGER NOT NULL REFERENCES runs(id),
            system TEXT NOT NULL,
            seq INTEGER NOT NULL,
            rows INTEGER NOT NULL,
            client TEXT NOT NULL,
            request_id TEXT NOT NULL,
            received REAL NOT NULL,
            done REAL NOT NULL,
            elapsed_s REAL NOT NULL,
            x_shape TEXT NOT NULL,
            theta_shape TEXT NOT NULL,
            y_shape TEXT NOT NULL,
            theta_id INTEGER NOT NULL,
            segment INTEGER NOT NULL,
            x_offset INTEGER NOT NULL,
            x_bytes INTEGER NOT NULL,
            y_offset INTEGER NOT NULL,
            y_bytes INTEGER NOT NULL
        )
    """)
    try:
        insert = "INSERT INTO thetas_v4 VALUES (?, ?, ?, ?, ?)"
        for tid, digest, theta in conn.execute("SELECT id, digest, theta FROM thetas "
                                               "ORDER BY id"):
            segment, offset = writer.append([theta])
            conn.execute(insert, (tid, digest, segment, offset, len(theta)))
        insert = "INSERT INTO measurements_v4 VALUES (" + ", ".join("?" * 19) + ")"
        for row in conn.execute(
                "SELECT id, run, system, seq, rows, client, request_id, received, done, "
                "elapsed_s, x_shape, theta_shape, y_shape, theta_id, x, y FROM measurements "
                "ORDER BY id"):
            x, y = row[14], row[15]
            segment, offset = writer.append([x, y])
            conn.execute(insert, (*row[:14], segment, offset, len(x), offset + len(x), len(y)))
        conn.executemany("INSERT INTO segments VALUES (?, ?)", writer.sizes() or [(1, 0)])
    finally:
        writer.close()  # fsynced (file and directory) before the transaction commits
    _script(conn, """
        DROP TABLE measurements;
        DROP TABLE thetas;
        ALTER TABLE thetas_v4 RENAME TO thetas;
        ALTER TABLE measurements_v4 RENAME TO measurements;
        CREATE UNIQUE INDEX thetas_digest ON thetas(digest);
        CREATE INDEX thetas_segment ON thetas(segment);
        CREATE UNIQUE INDEX measurements_seq ON measurements(seq);
        CREATE INDEX measurements_system_received ON measurements(system, received);
        CREATE INDEX measurements_received ON measurements(received);
        CREATE INDEX measurements_run ON measurements(run);
        CREATE INDEX measurements_theta ON measurements(theta_id);
        CREATE INDEX measurements_segment ON measurements(segment)
    """)


STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _v0_to_v1, 1: _v1_to_v2,
                                                          2: _v2_to_v3, 3: _v3_to_v4}


def version(conn: sqlite3.Connection) -> int:
    """The file's schema version (0 for an empty file)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "schema_version" not in tables:
        if tables:
            raise SchemaError(f"not a labd measurement store (tables {sorted(tables)})")
        return 0
    return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


def upgrade(conn: sqlite3.Connection) -> int:
    """Upgrade the file step by step to ``SCHEMA_VERSION``; return the version it had.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    old = version(conn)
    if old > SCHEMA_VERSION:
        raise SchemaError(f"store schema version {old} is newer than this labd reads "
                          f"({SCHEMA_VERSION}); upgrade labd")
    for v in range(old, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            STEPS[v](conn)
            conn.execute("UPDATE schema_version SET version = ?", (v + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return old
