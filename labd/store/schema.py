"""The measurement store's SQLite schema and its step upgrades.

Contract:

* ``SCHEMA_VERSION`` is the layout this code writes and reads. ``upgrade(conn)`` brings a file
  of any older version (0 = empty file) to it, one step at a time, each step in its own
  transaction together with the new version number, so an interrupted upgrade leaves the file
  at the previous version. A file newer than this code raises ``SchemaError``.
* ``STEPS[v]`` upgrades version ``v`` to ``v + 1``. A new layout adds a step; published steps
  never change (old files in the field were written by them).

Layout (version 2)::

    schema_version(version)                     one row
    runs(id, started, host, pid, versions, config, devices)
                                                one per daemon start; JSON texts
    measurements(id, run, system, seq, rows, client, request_id, received, done, elapsed_s,
                 x_shape, theta_shape, y_shape, x, theta, y)
                                                one per forward request; x, theta, y are raw
                                                little-endian float32 blobs, shapes JSON lists
                                                (theta [P] is one theta for every row)
    counters(name, value)                       'next_seq': sequence high-water mark
    unrecorded(system, requests, rows)          forwards of systems with record = false

The blobs are the last columns on purpose: SQLite keeps a row's leading columns in the b-tree
page and spills the rest to overflow pages, so metadata queries (and ``length()`` of a blob,
read from the record header) never touch the arrays.

Version 1 had no ``counters`` (the high-water mark was max(seq + rows), lost when pruning
deleted the newest rows) and no ``unrecorded`` table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 2


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


STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _v0_to_v1, 1: _v1_to_v2}


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
