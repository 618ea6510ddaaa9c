"""Reading the measurement store back: filtered, streamed, never all in memory.

* ``StoreReader(path)`` opens the file read-only, beside a live daemon (committed measurements
  only); if no process writes the store, it first ingests what a dead writer left in the ring.
* Queries take ``Filters`` (keywords, combined with AND): ``system``, ``since`` / ``until``
  (time received, UNIX seconds or ``datetime``, naive is local; ``until`` exclusive), ``run``,
  ``client``. Results come in storage order.
* ``records`` yields a ``Record`` per forward request, its arrays read-only views of the mapped
  segments (a segment pruned meanwhile raises ``FileNotFoundError``); ``iter_batches`` yields
  ``(x, theta, y)`` of at most about ``chunk_rows`` rows, theta one row per row, one set of
  dimensions each; ``load_arrays`` all at once. ``count`` gives (measurements, rows, bytes as
  sent), ``dimensions`` the distinct (input, param, output) sizes, ``info`` a summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, Unpack

import numpy as np

from labd.store.database import connect_readonly, counter, latest
from labd.store.recovery import recover_path
from labd.store.segments import SegmentReader, blobs_dir

FETCH = 16  # rows fetched from SQLite at a time


@dataclass(slots=True, frozen=True)
class Record:
    id: int
    run: int
    system: str
    seq: int
    rows: int
    client: str
    request_id: str
    received: float
    done: float
    elapsed_s: float
    x: np.ndarray  # float32 [rows, input_dim]
    theta: np.ndarray  # float32 [param_dim] or [rows, param_dim], as sent
    y: np.ndarray  # float32 [rows, output_dim]

    def theta_rows(self) -> np.ndarray:
        """theta as [rows, param_dim] (a broadcast view when it was sent as [param_dim])."""
        return np.broadcast_to(self.theta, (self.rows, self.theta.shape[-1]))


class Filters(TypedDict, total=False):
    system: str | None
    since: float | datetime | None
    until: float | datetime | None
    run: int | None
    client: str | None


#: A measurement's theta bytes (stored once in ``thetas``, counted in every measurement).
_THETA_BYTES = "(SELECT bytes FROM thetas WHERE thetas.id = theta_id)"


class StoreReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"no measurement store at {self.path}")
        recover_path(self.path)
        self._conn = connect_readonly(self.path)
        self._segments = SegmentReader(blobs_dir(self.path))

    def close(self) -> None:
        self._conn.close()
        self._segments.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------

    @staticmethod
    def _where(**filters: Unpack[Filters]) -> tuple[str, list[Any]]:
        terms, args = [], []
        for name, term in (("system", "system = ?"), ("run", "run = ?"),
                           ("client", "client = ?"), ("since", "received >= ?"),
                           ("until", "received < ?")):
            if (value := filters.get(name)) is not None:
                terms.append(term)
                args.append(value.timestamp() if isinstance(value, datetime) else value)
        return (" WHERE " + " AND ".join(terms)) if terms else "", args

    def records(self, **filters: Unpack[Filters]) -> Iterator[Record]:
        where, args = self._where(**filters)
        return self._select(f"{where} ORDER BY m.id", args)

    def last(self, limit: int) -> list[Record]:
        """The ``limit`` measurements with the highest sequence numbers, oldest first."""
        return list(self._select(" ORDER BY seq DESC LIMIT ?", [limit]))[::-1]

    def _select(self, tail: str, args: list[Any]) -> Iterator[Record]:
        cur = self._conn.execute(
            "SELECT m.id, run, system, seq, rows, client, request_id, received, done, "
            "elapsed_s, x_shape, theta_shape, y_shape, m.segment, x_offset, x_bytes, y_offset, "
            "y_bytes, t.segment, t.offset, t.bytes FROM measurements m JOIN thetas t ON "
            f"t.id = theta_id{tail}", args)
        array = self._segments.array
        try:
            while batch := cur.fetchmany(FETCH):
                for r in batch:
                    x_shape, theta_shape, y_shape = map(json.loads, r[10:13])
                    yield Record(*r[:10], x=array(r[13], r[14], r[15], x_shape),
                                 theta=array(*r[18:21], theta_shape),
                                 y=array(r[13], r[16], r[17], y_shape))
        finally:
            cur.close()

    def iter_batches(self, chunk_rows: int = 4096, **filters: Unpack[Filters]
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        parts: list[Record] = []
        held = 0
        for rec in self.records(**filters):
            dims = (rec.x.shape[1], rec.theta.shape[-1], rec.y.shape[1])
            if parts and (held + rec.rows > chunk_rows or dims != (
                    parts[0].x.shape[1], parts[0].theta.shape[-1], parts[0].y.shape[1])):
                yield _concat(parts)
                parts, held = [], 0
            parts.append(rec)
            held += rec.rows
        if parts:
            yield _concat(parts)

    def load_arrays(self, **filters: Unpack[Filters]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every selected row in memory; raises ``ValueError`` if dimensions differ."""
        batches = list(self.iter_batches(1 << 62, **filters))
        if not batches:
            raise ValueError(f"no measurements in {self.path} match the filters")
        if len(batches) > 1:
            raise ValueError("the selected measurements have different dimensions; "
                             "select one system and run")
        return batches[0]

    def count(self, **filters: Unpack[Filters]) -> tuple[int, int, int]:
        where, args = self._where(**filters)
        n, rows, size = self._conn.execute(
            "SELECT count(*), coalesce(sum(rows), 0), "
            f"coalesce(sum(x_bytes + {_THETA_BYTES} + y_bytes), 0) FROM measurements{where}",
            args).fetchone()
        return int(n), int(rows), int(size)

    def dimensions(self, **filters: Unpack[Filters]) -> set[tuple[int, int, int]]:
        where, args = self._where(**filters)
        return {(int(a), int(b), int(c)) for a, b, c in self._conn.execute(
            "SELECT DISTINCT json_extract(x_shape, '$[1]'), json_extract(theta_shape, '$[#-1]'),"
            f" json_extract(y_shape, '$[1]') FROM measurements{where}", args)}

    def runs(self) -> list[dict[str, Any]]:
        """Every run record, oldest first (config, versions, devices decoded)."""
        return [{"id": rid, "started": started, "host": host, "pid": pid,
                 "versions": json.loads(versions), "config": json.loads(config),
                 "devices": json.loads(devices)}
                for rid, started, host, pid, versions, config, devices in self._conn.execute(
                    "SELECT id, started, host, pid, versions, config, devices FROM runs "
                    "ORDER BY id")]

    def info(self) -> dict[str, Any]:
        """Counts and sizes per system and run, unrecorded systems, the next number."""
        c = self._conn
        systems = {}
        for system, n, rows, size, first, last in c.execute(
                "SELECT system, count(*), sum(rows), "
                f"sum(x_bytes + {_THETA_BYTES} + y_bytes), min(received), max(received) "
                "FROM measurements GROUP BY system ORDER BY system"):
            systems[system] = {"measurements": n, "rows": rows, "bytes": size,
                               "first": first, "last": last}
        runs = [{"id": rid, "started": started, "host": host, "measurements": n}
                for rid, started, host, n in c.execute(
                    "SELECT r.id, r.started, r.host, count(m.id) FROM runs r "
                    "LEFT JOIN measurements m ON m.run = r.id GROUP BY r.id ORDER BY r.id")]
        unrecorded = {s: {"requests": n, "rows": rows} for s, n, rows in c.execute(
            "SELECT system, requests, rows FROM unrecorded ORDER BY system")}
        db, blobs = c.execute(
            "SELECT page_size * page_count, (SELECT coalesce(sum(bytes), 0) FROM segments) "
            "FROM pragma_page_size, pragma_page_count").fetchone()
        return {"path": str(self.path), "schema_version": latest(),
                "database_bytes": db, "blob_bytes": blobs, "store_bytes": db + blobs,
                "next_seq": counter(c, "next_seq"), "systems": systems, "runs": runs,
                "unrecorded": unrecorded}


def _concat(parts: list[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([p.x for p in parts]),
            np.concatenate([p.theta_rows() for p in parts]),
            np.concatenate([p.y for p in parts]))
