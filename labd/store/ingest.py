"""Ingestion: ring records into segment bytes and SQLite rows, one transaction a group.

``ingest(conn, segments, group)`` commits ring records with the high-water mark and the ring
position after them, or nothing (the ring keeps them). Equal thetas share a ``thetas`` row
(by digest); a reference (``"theta_seq"``) resolves to that measurement's theta, inserted
before it. ``replay`` groups entries: the writer thread and recovery both use it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from labd.store import database
from labd.store.database import StoreError, transaction
from labd.store.ring import Entry
from labd.store.segments import SegmentWriter

MAX_GROUP = 256  # records, and bytes of arrays, committed in one transaction at most
MAX_GROUP_BYTES = 64 * 1024 * 1024

_INSERT = """INSERT INTO measurements (run, system, seq, rows, client, request_id, received,
    done, elapsed_s, x_shape, theta_shape, y_shape, theta_id, segment, x_offset, x_bytes,
    y_offset, y_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_UNRECORDED = """INSERT INTO unrecorded VALUES (?, 1, ?) ON CONFLICT(system)
    DO UPDATE SET requests = requests + 1, rows = rows + excluded.rows"""


def _row(conn: sqlite3.Connection, segments: SegmentWriter, entry: Entry,
         carried: dict[int, int]) -> tuple[object, ...]:
    """A measurement's row, its arrays appended; ``carried``: seq -> thetas id in the group."""
    meta, x, theta, y, _ = entry
    nx, nt, ny = len(x), len(theta), len(y)
    if (ref := meta.get("theta_seq")) is None:  # a theta carried: stored if new
        digest = database.theta_digest(theta)
        found = conn.execute("SELECT id FROM thetas WHERE digest = ?", (digest,)).fetchone()
    elif ref in carried:
        found = (carried[ref],)
    elif (found := conn.execute("SELECT theta_id FROM measurements WHERE seq = ?",
                                (ref,)).fetchone()) is None:
        raise StoreError(f"measurement {meta['seq']} refers to the theta of measurement {ref}, "
                         f"which the store lacks")
    if found is None:
        segment, offset = segments.append([x, theta, y])
        tid = conn.execute("INSERT INTO thetas (digest, segment, offset, bytes) VALUES "
                           "(?, ?, ?, ?)", (digest, segment, offset + nx, nt)).lastrowid
        y_offset = offset + nx + nt
    else:
        segment, offset = segments.append([x, y])
        tid, y_offset = found[0], offset + nx
    carried[meta["seq"]] = tid
    return (meta["run"], meta["system"], meta["seq"], meta["rows"], meta["client"],
            meta["request_id"], meta["received"], meta["done"], meta["elapsed_s"],
            json.dumps(meta["x_shape"]), json.dumps(meta["theta_shape"]),
            json.dumps(meta["y_shape"]), tid, segment, offset, nx, y_offset, ny)


def ingest(conn: sqlite3.Connection, segments: SegmentWriter, group: list[Entry]) -> None:
    metas, carried = [e.meta for e in group], {}
    with transaction(conn, segments):
        conn.executemany(_INSERT, [_row(conn, segments, e, carried) for e in group
                                   if e.meta["kind"] == "measurement"])
        conn.executemany(_UNRECORDED, [(m["system"], m["rows"]) for m in metas
                                       if m["kind"] == "reserve"])
        conn.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'next_seq'",
                     (max(m["seq"] + m["rows"] for m in metas),))
        conn.execute("UPDATE counters SET value = ? WHERE name = 'ring_position'",
                     (group[-1].end,))


def replay(conn: sqlite3.Connection, segments: SegmentWriter, entries: Iterable[Entry],
           start: int) -> tuple[int, int]:
    """Ingest ring records from position ``start`` on, in groups; return (how many, the ring
    position after the last)."""
    group: list[Entry] = []
    size = done = 0
    position = start
    for entry in entries:
        group.append(entry)
        size += len(entry.x) + len(entry.theta) + len(entry.y)
        position = entry.end
        if size >= MAX_GROUP_BYTES or len(group) >= MAX_GROUP:
            ingest(conn, segments, group)
            done, group, size = done + len(group), [], 0
    if group:
        ingest(conn, segments, group)
    return done + len(group), position
