"""Reading the measurement store back: filtered, streamed, never all in memory.

Contract:

* ``StoreReader(path)`` opens the file read-only (safe while a daemon writes it: a reader sees
  committed measurements only). Files of an older schema are read after the daemon (or any
  ``Store``) has upgraded them. The reader writes only to finish a crash: when a daemon died
  leaving measurements in the store's journal (``labd.store.journal``) and no process writes the
  store now, opening it first ingests them, as SQLite replays a hot journal.
* Every query takes the same filters, all optional and combined with AND: ``system``,
  ``since`` / ``until`` (time the request was received: UNIX seconds or ``datetime``; naive
  datetimes are local time; ``since`` inclusive, ``until`` exclusive), ``run`` (run id) and
  ``client``. Results are in storage order (the order measurements were committed).
* ``records(...)`` yields one ``Record`` per stored forward request, fetching a few rows at a
  time. ``iter_batches(..., chunk_rows=N)`` yields ``(x [n, in], theta [n, P], y [n, out])``
  float32 arrays of at most about ``N`` rows (one measurement larger than ``N`` comes whole),
  theta broadcast to one row per row of x; a batch never mixes dimensions (a system whose
  dimensions changed between runs yields separate batches). ``load_arrays(...)`` concatenates
  everything into memory (for data sets known to fit).
* Arrays are read from the store's segment files (``labd.store.segments``) through read-only
  memory maps, without a copy: a ``Record``'s arrays are read-only views of the mapping (they
  keep it alive after ``close()``); ``iter_batches`` and ``load_arrays`` concatenate them into
  new arrays. A theta is stored once however many measurements share it (``thetas``);
  records that share one share its array.
* A measurement pruned by a live daemon between the query and the read of its arrays raises
  ``FileNotFoundError`` (its segment file is gone).
* ``count(...)`` gives (measurements, rows, array bytes as sent: a shared theta counts in
  every measurement), ``dimensions(...)`` the distinct
  (input_dim, param_dim, output_dim); ``info()`` summarises the file per
  system and per run; ``runs()`` lists the run records.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from labd.store import schema
from labd.store.segments import SegmentReader, blobs_dir
from labd.store.writer import recover_path

FETCH = 16  # rows fetched from SQLite at a time
THETAS = 8  # distinct thetas ``records`` keeps decoded (measurements share them)


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
        if self.theta.ndim == 1:
            return np.broadcast_to(self.theta, (self.rows, self.theta.shape[0]))
        return self.theta


Time = float | datetime | None


def _seconds(t: float | datetime) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


#: A measurement's theta bytes (stored once in ``thetas``, counted in every measurement).
_THETA_BYTES = "(SELECT bytes FROM thetas WHERE thetas.id = theta_id)"


class StoreReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"no measurement store at {self.path}")
        recover_path(self.path)
        self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 10000")
        found = schema.version(self._conn)
        if found != schema.SCHEMA_VERSION:
            self._conn.close()
            raise schema.SchemaError(
                f"{self.path} has schema version {found}; this reader reads "
                f"{schema.SCHEMA_VERSION} (open it once with a daemon or Store to upgrade)")
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
    def _where(system: str | None, since: Time, until: Time, run: int | None,
               client: str | None) -> tuple[str, list[Any]]:
        terms: list[str] = []
        args: list[Any] = []
        for term, value in (("system = ?", system), ("run = ?", run), ("client = ?", client)):
            if value is not None:
                terms.append(term)
                args.append(value)
        if since is not None:
            terms.append("received >= ?")
            args.append(_seconds(since))
        if until is not None:
            terms.append("received < ?")
            args.append(_seconds(until))
        return (" WHERE " + " AND ".join(terms)) if terms else "", args

    def records(self, system: str | None = None, since: Time = None, until: Time = None,
                run: int | None = None, client: str | None = None) -> Iterator[Record]:
        where, args = self._where(system, since, until, run, client)
        cur = self._conn.execute(
            "SELECT id, run, system, seq, rows, client, request_id, received, done, elapsed_s, "
            "x_shape, theta_shape, y_shape, theta_id, segment, x_offset, x_bytes, y_offset, "
            f"y_bytes FROM measurements{where} ORDER BY id", args)
        array = self._segments.array
        thetas: dict[tuple[int, str], np.ndarray] = {}  # the last THETAS used
        try:
            while batch := cur.fetchmany(FETCH):
                for r in batch:
                    key = (r[13], r[11])
                    theta = thetas.pop(key, None)
                    if theta is None:
                        segment, offset, nbytes = self._conn.execute(
                            "SELECT segment, offset, bytes FROM thetas WHERE id = ?",
                            (r[13],)).fetchone()
                        theta = array(segment, offset, nbytes, json.loads(r[11]))
                        if len(thetas) >= THETAS:
                            del thetas[next(iter(thetas))]
                    thetas[key] = theta
                    segment = r[14]
                    yield Record(*r[:10], x=array(segment, r[15], r[16], json.loads(r[10])),
                                 theta=theta, y=array(segment, r[17], r[18], json.loads(r[12])))
        finally:
            cur.close()

    def iter_batches(self, system: str | None = None, chunk_rows: int = 4096,
                     since: Time = None, until: Time = None, run: int | None = None,
                     client: str | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        parts: list[Record] = []
        held = 0
        for rec in self.records(system, since, until, run, client):
            dims = (rec.x.shape[1], rec.theta.shape[-1], rec.y.shape[1])
            if parts and (held + rec.rows > chunk_rows or dims != (
                    parts[0].x.shape[1], parts[0].theta.shape[-1], parts[0].y.shape[1])):
                yield _concat(parts)
                parts, held = [], 0
            parts.append(rec)
            held += rec.rows
        if parts:
            yield _concat(parts)

    def load_arrays(self, system: str | None = None, since: Time = None, until: Time = None,
                    run: int | None = None, client: str | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every selected row in memory; raises ``ValueError`` if dimensions differ."""
        batches = list(self.iter_batches(system, 1 << 62, since, until, run, client))
        if not batches:
            raise ValueError(f"no measurements in {self.path} match the filters")
        if len(batches) > 1:
            raise ValueError("the selected measurements have different dimensions; "
                             "select one system and run")
        return batches[0]

    def count(self, system: str | None = None, since: Time = None, until: Time = None,
              run: int | None = None, client: str | None = None) -> tuple[int, int, int]:
        """(measurements, rows, bytes of x + theta + y) matching the filters."""
        where, args = self._where(system, since, until, run, client)
        n, rows, size = self._conn.execute(
            "SELECT count(*), coalesce(sum(rows), 0), "
            f"coalesce(sum(x_bytes + {_THETA_BYTES} + y_bytes), 0) FROM measurements{where}",
            args).fetchone()
        return int(n), int(rows), int(size)

    def dimensions(self, system: str | None = None, since: Time = None, until: Time = None,
                   run: int | None = None, client: str | None = None
                   ) -> set[tuple[int, int, int]]:
        """The distinct (input_dim, param_dim, output_dim) of the selection (metadata only)."""
        where, args = self._where(system, since, until, run, client)
        return {(int(a), int(b), int(c)) for a, b, c in self._conn.execute(
            "SELECT DISTINCT json_extract(x_shape, '$[1]'), json_extract(theta_shape, '$[#-1]'),"
            f" json_extract(y_shape, '$[1]') FROM measurements{where}", args)}

    def runs(self) -> list[dict[str, Any]]:
        """Every run record, oldest first (config, versions, devices decoded)."""
        out = []
        for rid, started, host, pid, versions, config, devices in self._conn.execute(
                "SELECT id, started, host, pid, versions, config, devices FROM runs ORDER BY id"):
            out.append({"id": rid, "started": started, "host": host, "pid": pid,
                        "versions": json.loads(versions), "config": json.loads(config),
                        "devices": json.loads(devices)})
        return out

    def info(self) -> dict[str, Any]:
        """Per system: measurements, rows, bytes, first and last time; runs; the size of the
        database file, of the segments (``blob_bytes``) and both (``store_bytes``); systems
        served without recording; the next sequence number."""
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
        page = c.execute("PRAGMA page_size").fetchone()[0]
        next_seq = c.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()[0]
        database = page * c.execute("PRAGMA page_count").fetchone()[0]
        blobs = c.execute("SELECT coalesce(sum(bytes), 0) FROM segments").fetchone()[0]
        return {"path": str(self.path), "schema_version": schema.SCHEMA_VERSION,
                "database_bytes": database, "blob_bytes": blobs,
                "store_bytes": database + blobs,
                "next_seq": next_seq, "systems": systems, "runs": runs,
                "unrecorded": unrecorded}


def _concat(parts: list[Record]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.concatenate([p.x for p in parts]),
            np.concatenate([p.theta_rows() for p in parts]),
            np.concatenate([p.y for p in parts]))
