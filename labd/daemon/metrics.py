"""Serving statistics: counters kept on the forward path, read by the ``monitor`` operation.

Contract:

* One ``SystemStats`` per system, written by whichever thread measures that system (its
  worker, or the server thread for inline systems) and by the server thread for requests it
  answers itself (refusals, cached repeats). Updates are plain integer and float arithmetic on
  preallocated slots plus a copy of the measurement's first row (a few microseconds per
  request; no lock, no I/O). The server thread reads them when it answers ``monitor``: a read
  may miss an update in flight, the next one has it.
* ``requests`` counts forward requests by outcome: ``ok`` (measured and recorded), ``cached``
  (a repeated id answered from the reply cache), or the error code of the reply (``busy``,
  ``bad_array``, ``out_of_range``, ``unauthorized``, ``instrument_fault``). ``faults`` counts
  instrument faults (watchdog included), ``reconnects`` successful reopenings after one.
* Histograms have fixed bounds (``BOUNDS``, seconds) and count each value in the first bucket
  whose bound is at least the value (Prometheus' ``le``), the last bucket being ``+Inf``;
  counts are per bucket, not cumulative. ``latency`` is the time from a request's arrival to
  its reply being ready (queue wait, measurement, recording); ``instrument`` is ``elapsed_s``.
* ``busy_fraction(now)``: instrument seconds over the last ``WINDOW_S`` wall-clock seconds (or
  since the statistics began, if later), at most 1. A measurement counts in the second it
  ended.
* ``last``: the first row of the last successful measurement (``x``, ``theta``, ``y`` copied,
  float32), its ``seq``, end time and client.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Histogram bucket bounds (seconds): 100 us to 60 s.
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The busy fraction's window (seconds).
WINDOW_S = 60
#: Clients remembered per system (the least recently seen is forgotten beyond this).
MAX_CLIENTS = 64


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BOUNDS, value)] += 1
        self.sum += value

    def to_json(self) -> dict[str, Any]:
        return {"le": list(BOUNDS), "counts": list(self.counts), "sum": self.sum}


class BusyWindow:
    """Instrument seconds per wall-clock second, for the last ``WINDOW_S`` seconds."""

    __slots__ = ("_seconds", "_slots", "began")

    def __init__(self, now: float) -> None:
        self._slots = [0.0] * WINDOW_S
        self._seconds = [-1] * WINDOW_S  # the second each slot holds
        self.began = now

    def add(self, when: float, busy_s: float) -> None:
        second = int(when)
        i = second % WINDOW_S
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._slots[i] = 0.0
        self._slots[i] += busy_s

    def fraction(self, now: float) -> float:
        second = int(now)
        total = sum(v for v, s in zip(self._slots, self._seconds, strict=True)
                    if second - WINDOW_S < s <= second)
        span = min(float(WINDOW_S), max(now - self.began, 1.0))
        return min(1.0, total / span)


@dataclass(slots=True)
class LastMeasurement:
    seq: int
    time: float  # UNIX time the measurement ended
    client: str
    rows: int  # rows of the request; x, theta, y are its first row
    x: np.ndarray
    theta: np.ndarray
    y: np.ndarray


class SystemStats:
    def __init__(self, now: float | None = None) -> None:
        self.requests: dict[str, int] = {"ok": 0}
        self.shots = 0
        self.instrument_s = 0.0
        self.faults = 0
        self.reconnects = 0
        self.latency = Histogram()
        self.instrument = Histogram()
        self.busy = BusyWindow(time.time() if now is None else now)
        self.clients: dict[str, list[float]] = {}  # name -> [requests, last seen (UNIX s)]
        self.last: LastMeasurement | None = None

    @property
    def served(self) -> int:
        return self.requests["ok"]

    def measured(self, client: str, seq: int, x: np.ndarray, theta: np.ndarray, y: np.ndarray,
                 elapsed_s: float, received: float, done: float) -> None:
        """A successful forward: ``received``/``done`` in UNIX seconds."""
        self.requests["ok"] += 1
        rows = x.shape[0]
        self.shots += rows
        self.instrument_s += elapsed_s
        self.instrument.observe(elapsed_s)
        self.latency.observe(done - received)
        self.busy.add(done, elapsed_s)
        self._seen(client, done)
        self.last = LastMeasurement(seq, done, client, rows, x[0].copy(),
                                    (theta if theta.ndim == 1 else theta[0]).copy(), y[0].copy())

    def answered(self, outcome: str, client: str) -> None:
        """A forward answered without a measurement (``outcome``: ``cached`` or an error code)."""
        self.requests[outcome] = self.requests.get(outcome, 0) + 1
        self._seen(client, time.time())

    def fault(self, client: str) -> None:
        """An instrument fault answered ``instrument_fault``."""
        self.faults += 1
        self.answered("instrument_fault", client)

    def _seen(self, client: str, when: float) -> None:
        entry = self.clients.get(client)
        if entry is None:
            if len(self.clients) >= MAX_CLIENTS:
                # (list(): a copy taken at once, as another thread may add a client meanwhile)
                oldest = min(list(self.clients.items()), key=lambda kv: kv[1][1])[0]
                self.clients.pop(oldest, None)
            entry = self.clients[client] = [0, 0.0]
        entry[0] += 1
        entry[1] = when

    def to_json(self, now: float) -> dict[str, Any]:
        """The ``monitor`` reply's counters of this system (``last`` without its arrays)."""
        last = self.last
        return {
            "requests": dict(self.requests), "shots": self.shots,
            "instrument_s": self.instrument_s, "busy_1min": self.busy.fraction(now),
            "faults": self.faults, "reconnects": self.reconnects,
            "clients": {name: {"requests": int(n), "last_seen": seen}
                        for name, (n, seen) in self.clients.copy().items()},
            "latency_s": self.latency.to_json(), "instrument_time_s": self.instrument.to_json(),
            "last": None if last is None else {"seq": last.seq, "time": last.time,
                                               "client": last.client, "rows": last.rows},
        }

    def last_arrays(self, name: str) -> list[tuple[str, np.ndarray]]:
        """The last measurement's first row as ``monitor`` reply arrays ``NAME/x`` etc."""
        last = self.last
        if last is None:
            return []
        return [(f"{name}/x", last.x), (f"{name}/theta", last.theta), (f"{name}/y", last.y)]
