"""The store's writer: ``Store`` records every measurement crash-safe, off the serving path.

``record(m)`` returns once ``m`` is in the journal ring (``ring``), before any SQLite work, so
a caller that replies after it returns never loses a measurement whose reply left, however its
process dies. A writer thread ingests the ring (``ingest``); the next opening after a crash
ingests the rest (``recovery``). ``synchronous = "normal"``: power loss or an OS crash may lose
the last measurements; ``"full"`` syncs every record and commit. One process writes a store
(``StoreError``); ``next_seq()`` is the first number never recorded nor reserved.

``record`` (any thread, after ``start_run``) raises ``StoreError`` if the ring cannot be
written, the store is closed or the numbers were taken, and waits while the ring is full. A
theta equal to one of the last ``THETA_CACHE`` of its system is recorded as a reference.
Readers see a measurement about ``INGEST_LINGER_S`` after its reply; failed commits retry.
Pruning runs at start and every ``prune_interval_s`` at a *fence*: ``record``'s thetas are
forgotten and the ring position noted under the lock that orders the ring; the writer prunes
once it has ingested exactly that far, so no reference to a pruned theta is left to ingest.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import platform
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labd.store import files
from labd.store import segments as seg
from labd.store.database import StoreError, Synchronous, counter
from labd.store.ingest import replay
from labd.store.pruning import Pruner
from labd.store.recovery import open_recovered
from labd.store.ring import RingFull

log = logging.getLogger("labd.store")

MIN_SEGMENT_BYTES = 256 * 1024  # with max_bytes, segments close at 1/16 of it, at least this
INGEST_LINGER_S = 0.1  # the writer waits for more records, unless LINGER_BYTES wait
LINGER_BYTES = 16 * 1024 * 1024
THETA_CACHE = 4  # recent distinct thetas per system that a theta is compared with,
THETA_CACHE_BYTES = 4 * 1024 * 1024  # if not larger than this
#: The writer thread's nice value, where threads have one: busy CPUs serve requests first.
WRITER_NICE = int(os.environ.get("LABD_STORE_WRITER_NICE", "10"))
RETRY_S = 1.0  # between attempts to commit
_EMPTY = memoryview(b"")
_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


@dataclass(slots=True, frozen=True)
class Measurement:
    """One forward request (times in UNIX seconds; float32 arrays)."""

    system: str
    seq: int  # number of row 0; rows are numbered consecutively
    client: str
    request_id: str
    x: np.ndarray  # [B, input_dim]
    theta: np.ndarray  # [param_dim] or [B, param_dim]
    y: np.ndarray  # [B, output_dim]
    received: float
    done: float
    elapsed_s: float  # instrument time


def _blob(a: np.ndarray) -> memoryview:
    """The array as little-endian float32 bytes, without a copy when it already is."""
    return memoryview(np.ascontiguousarray(a, dtype="<f4")).cast("B")


def _shape(a: np.ndarray) -> str:
    return "[" + ",".join(map(str, a.shape)) + "]"


class _Claims:
    """Numbers taken by this process: all below ``floor``, and disjoint spans above it."""

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self._spans: list[tuple[int, int]] = []  # [start, end), sorted, never touching

    def claim(self, start: int, end: int) -> bool:
        """Take ``[start, end)``; False (nothing taken) if any of it was taken before."""
        spans = self._spans
        i = bisect.bisect(spans, (start, end))
        if start < self.floor or (i and spans[i - 1][1] > start) or (
                i < len(spans) and spans[i][0] < end):
            return False
        spans.insert(i, (start, end))
        if i + 1 < len(spans) and spans[i + 1][0] == end:
            spans[i] = (start, spans.pop(i + 1)[1])
        if i and spans[i - 1][1] == start:
            spans[i - 1] = (spans[i - 1][0], spans.pop(i)[1])
        if spans[0][0] == self.floor:
            self.floor = spans.pop(0)[1]
        return True


class Store:
    def __init__(self, path: str | Path, synchronous: Synchronous = "normal",
                 max_bytes: int = 0, max_age_days: float = 0.0,
                 prune_interval_s: float = 600.0) -> None:
        self.path = Path(path).expanduser()
        self.prune_interval_s = prune_interval_s
        self._fsync = synchronous == "full"
        limit = max(MIN_SEGMENT_BYTES, max_bytes // 16) if max_bytes else seg.SEGMENT_BYTES
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._ring, self._conn, self._segments = open_recovered(
                self.path, synchronous, min(limit, seg.SEGMENT_BYTES), self._fsync)
        except files.Busy as exc:
            raise StoreError(str(exc)) from None
        self._pruner = Pruner(self._conn, self._segments, max_bytes, max_age_days)
        self._next_seq = counter(self._conn, "next_seq")
        self._claims = _Claims(self._next_seq)
        # Orders ring appends and close(); _work wakes the writer, _progress waiting callers.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._ingested = self._ring.end  # ring position up to which SQLite has it
        self._fence_at: int | None = None  # ring position at which to prune
        self._thetas: dict[str, list[tuple[bytes, int]]] = {}  # recent: (bytes, carrier seq)
        self._closed = False
        self._run: int | None = None
        self._thread = threading.Thread(target=self._write_loop, name="labd-store", daemon=True)

    def next_seq(self) -> int:
        return self._next_seq

    def start_run(self, config: dict[str, Any], devices: dict[str, Any],
                  versions: dict[str, str]) -> None:
        """Store the run record and start the writer thread."""
        versions = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                    **versions}
        self._run = self._conn.execute(
            "INSERT INTO runs (started, host, pid, versions, config, devices) VALUES "
            "(?, ?, ?, ?, ?, ?)", (time.time(), socket.gethostname(), os.getpid(),
                                   json.dumps(versions), json.dumps(config),
                                   json.dumps(devices))).lastrowid
        if self._pruner.max_age_days or self._pruner.max_bytes:
            self._fence()
        self._thread.start()

    def record(self, m: Measurement) -> None:
        x, theta, y = _blob(m.x), _blob(m.theta), _blob(m.y)
        seq, rows = int(m.seq), int(m.x.shape[0])
        # JSON text directly: cheaper on the serving thread than a dict and json.dumps
        meta = (f'{{"kind":"measurement","run":{self._run},"system":{_json_str(m.system)},'
                f'"seq":{seq},"rows":{rows},"client":{_json_str(m.client)},'
                f'"request_id":{_json_str(m.request_id)},"received":{float(m.received)!r},'
                f'"done":{float(m.done)!r},"elapsed_s":{float(m.elapsed_s)!r},'
                f'"x_shape":{_shape(m.x)},"theta_shape":{_shape(m.theta)},'
                f'"y_shape":{_shape(m.y)}')
        self._submit(m.system, seq, rows, meta, (x, theta, y),
                     theta.nbytes <= THETA_CACHE_BYTES)

    def reserve(self, system: str, seq: int, rows: int) -> None:
        meta = json.dumps({"kind": "reserve", "system": system, "seq": seq, "rows": rows})
        self._submit(system, seq, rows, meta[:-1], (_EMPTY, _EMPTY, _EMPTY))

    def backlog(self) -> int:
        """Bytes recorded in the ring and not yet ingested into the database."""
        return self._ring.end - self._ingested

    def close(self) -> None:
        """Ingest everything recorded, stop the writer thread, close the files."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._work.notify_all()
            self._progress.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._ingested != self._ring.end:  # commits kept failing
            log.error("store: ring records not ingested; the next opening replays them")
        self._segments.close()
        self._ring.close()
        self._conn.close()

    # -- callers' side ------------------------------------------------------------------------

    def _submit(self, system: str, seq: int, rows: int, meta: str,
                arrays: tuple[memoryview, memoryview, memoryview], compare: bool = False
                ) -> None:
        """Copy the record (``meta``: JSON text without its closing brace) into the ring."""
        with self._lock:
            if self._run is None or self._closed:
                raise StoreError("the store is not running (start_run, close)")
            if not self._claims.claim(seq, seq + rows):
                raise StoreError(f"measurement not stored: UNIQUE constraint failed: numbers "
                                 f"{seq}..{seq + rows - 1} overlap numbers already taken")
            seen = self._thetas.setdefault(system, []) if compare else []
            for i, (known, carrier) in enumerate(seen):
                # a memcmp without a copy; equal lengths make it equality
                if len(known) == arrays[1].nbytes and known.startswith(arrays[1]):
                    seen.insert(0, seen.pop(i))
                    meta += f',"theta_seq":{carrier}'
                    arrays, compare = (arrays[0], _EMPTY, arrays[2]), False
                    break
            idle = self._ring.end == self._ingested
            self._append((meta + "}").encode(), arrays)
            if compare:  # carried: later equal thetas refer to this measurement
                seen.insert(0, (bytes(arrays[1]), seq))
                del seen[THETA_CACHE:]
            if idle or self._ring.end - self._ingested >= LINGER_BYTES:
                self._work.notify()

    def _append(self, body: bytes, arrays: tuple[memoryview, memoryview, memoryview]) -> None:
        """Copy a record into the ring, waiting for ingestion while it is full."""
        while True:
            try:
                self._ring.append(body, *arrays, self._ingested, self._fsync)
                return
            except RingFull:
                if self._ingested == self._ring.end:  # all ingested: the record is larger
                    need = sum(a.nbytes for a in arrays) + 65536 + len(body)
                    self._ring.grow(self._ring.end, need, self._fsync)
                    self._ingested = self._ring.end
                    continue
                self._work.notify()
                self._progress.wait()
                if self._closed:
                    raise StoreError("the store is closed") from None
            except OSError as exc:
                raise StoreError(f"measurement not stored: {exc}") from exc

    # -- the writer thread --------------------------------------------------------------------

    def _fence(self) -> None:
        with self._lock:
            self._thetas.clear()
            self._fence_at = self._ring.end
            self._work.notify()

    def _next_batch(self, timeout: float) -> tuple[int, int] | None:
        """The ring range to ingest after a linger (fewer, larger commits); None at the end."""
        with self._lock:  # (a spurious wake-up costs an empty batch)
            if not (self._closed or self._fence_at is not None
                    or self._ring.end != self._ingested):
                self._work.wait(timeout)
            if (not self._closed and self._fence_at is None
                    and 0 < self._ring.end - self._ingested < LINGER_BYTES):
                self._work.wait(INGEST_LINGER_S)
            if self._closed and self._ring.end == self._ingested and self._fence_at is None:
                return None
            return self._ingested, self._ring.end if self._fence_at is None else self._fence_at

    def _write_loop(self) -> None:
        if WRITER_NICE:  # this thread only (a Linux thread id is a process id for the kernel)
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        pruning = bool(self._pruner.max_age_days or self._pruner.max_bytes)
        next_prune = math.inf
        while batch := self._next_batch(min(next_prune - time.monotonic(), 3600.0)):
            if not self._ingest(*batch):
                return  # closing while commits fail: the ring keeps the rest for replay
            if self._fence_at is not None and self._ingested == self._fence_at:
                self._fence_at = None
                self._pruner.prune()
                next_prune = time.monotonic() + self.prune_interval_s
            elif pruning and time.monotonic() >= next_prune:
                self._fence()
                next_prune = math.inf  # until the fence is reached

    def _ingest(self, start: int, stop: int) -> bool:
        """Ingest the ring from ``start`` to ``stop`` (retrying); False if closed meanwhile."""
        position = start
        while position != stop:
            try:
                _, position = replay(self._conn, self._segments,
                                     self._ring.entries(position, stop), position)
                if position != stop:
                    raise StoreError(f"ring record at {position} unreadable")
            except (sqlite3.Error, OSError, StoreError):
                log.exception("store: cannot commit measurements (kept in the ring; retrying "
                              "in %g s)", RETRY_S)
                if self._closed:
                    return False
                time.sleep(RETRY_S)
                position = counter(self._conn, "ring_position")  # groups that did commit
        with self._lock:
            self._ingested = position
            self._progress.notify_all()
        return True
