"""``DaemonWatch``: a daemon as the monitor sees it, polled over the wire.

Contract:

* A thread asks the daemon at ``endpoint`` for ``monitor`` (with ``last: true``) every
  ``interval_s`` seconds, whatever the number of viewers: the page and ``/metrics`` read the
  newest answer, so a page left open in ten browsers costs the daemon what one costs.
* ``view()`` is that answer made ready for the page: per system the daemon's counters (without
  the histograms) plus
  ``rates`` (requests and shots per second over the last ``RATE_WINDOW_S`` seconds of polls)
  and ``last`` (its ``seq``, time, client, rows; with ``plot=NAME``, that system's first row
  of ``x``, ``theta`` and ``y`` as lists); and the
  link: ``connected``, ``since`` (UNIX time of the last change), ``error`` (why it is down),
  ``restarts`` (daemon restarts seen: a new ``started`` time).
* ``fresh()`` returns an answer (``Snapshot``) polled after the call began: what ``/metrics``
  uses, so a scrape sees the daemon as it is. Callers at the same time share one poll, and
  polls are at least ``MIN_GAP_S`` apart, so no number of scrapers makes the monitor ask the
  daemon more than ``1 / MIN_GAP_S`` times a second.
* A daemon that does not answer within ``timeout_s`` is shown as unreachable; polling goes on
  with a fresh connection, and the view comes back by itself when the daemon does (counters
  restart from zero after a daemon restart: rates never go negative).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labd.client import LabClient, LabError

log = logging.getLogger("labd.web")

#: Rates are the counters' change over the polls of the last this many seconds.
RATE_WINDOW_S = 5.0
#: Seconds between the starts of two polls at least.
MIN_GAP_S = 0.1
#: The ``monitor`` reply's histograms: for ``/metrics``, not sent to the page.
HISTOGRAMS = ("latency_s", "instrument_time_s")


@dataclass(frozen=True)
class Snapshot:
    """One ``monitor`` answer (``reply`` None while the daemon is unreachable)."""

    polled: float  # time.monotonic() when the poll began
    reply: dict[str, Any] | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    error: str = ""


def _totals(reply: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per system: (forward requests answered, shots)."""
    return {name: (sum(s["requests"].values()), s["shots"])
            for name, s in reply["systems"].items()}


class DaemonWatch:
    def __init__(self, endpoint: str, interval_s: float = 1.0, timeout_s: float = 2.0,
                 curve: dict[str, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._curve = curve
        self._client: LabClient | None = None
        self._latest = Snapshot(-math.inf, None, error="not polled yet")
        self._history: deque[tuple[float, dict[str, tuple[int, int]]]] = deque()
        self._started: float | None = None  # the daemon's start time, to notice restarts
        self.restarts = 0
        self._since = time.time()
        self._cond = threading.Condition()
        self._asked = -math.inf  # time.monotonic() of the latest reader's call of fresh()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labd-web-watch", daemon=True)

    # -- the polling thread ---------------------------------------------------------------------

    def start(self) -> DaemonWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(self.timeout_s + 1.0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                snapshot = self._poll(began)
                with self._cond:
                    self._note(snapshot)
                    self._cond.notify_all()
                self._stop.wait(MIN_GAP_S)
                with self._cond:
                    self._cond.wait_for(lambda b=began: self._asked > b or self._stop.is_set(),
                                        max(0.0, self.interval_s - MIN_GAP_S))
        finally:
            if self._client is not None:
                self._client.close()

    def _poll(self, began: float) -> Snapshot:
        if self._client is None:
            self._client = LabClient(self.endpoint, timeout_s=self.timeout_s, retries=0,
                                     curve=self._curve)
        try:
            header, arrays = self._client.call("monitor", {"last": True})
            return Snapshot(began, header.op_fields, {k: np.array(v) for k, v in arrays.items()})
        except LabError as exc:
            error = str(exc)
        except Exception as exc:  # (a reply it cannot read: the page must say so, not freeze)
            log.exception("monitor: cannot read the daemon's answer")
            error = f"cannot read the daemon's answer: {exc}"
        self._client.close()  # a fresh connection next time (and no late replies)
        self._client = None
        return Snapshot(began, None, error=error)

    def _note(self, snapshot: Snapshot) -> None:
        """Take a new poll's answer (under the condition's lock)."""
        was_up = self._latest.reply is not None
        reply = snapshot.reply
        if (reply is not None) != was_up:
            self._since = time.time()
            if reply is None:
                log.warning("daemon at %s unreachable: %s", self.endpoint, snapshot.error)
            else:
                log.info("daemon at %s answers", self.endpoint)
        if reply is not None:
            if self._started is not None and reply["started"] != self._started:
                self.restarts += 1
                self._history.clear()
                log.info("daemon at %s restarted", self.endpoint)
            self._started = reply["started"]
            self._history.append((snapshot.polled, _totals(reply)))
            while snapshot.polled - self._history[0][0] > RATE_WINDOW_S:
                self._history.popleft()
        self._latest = snapshot

    # -- readers (any thread) -------------------------------------------------------------------

    def fresh(self) -> Snapshot:
        """An answer polled after this call began (the newest one if the thread stopped)."""
        with self._cond:
            asked = self._asked = time.monotonic()
            self._cond.notify_all()
            if self._thread.is_alive():
                self._cond.wait_for(lambda: self._latest.polled >= asked,
                                    self.timeout_s + 1.0 + MIN_GAP_S)
            return self._latest

    def _rates(self) -> dict[str, dict[str, float]]:
        if len(self._history) < 2:
            return {}
        (t0, first), (t1, last) = self._history[0], self._history[-1]
        span = max(t1 - t0, 1e-9)
        return {name: {"requests_per_s": max(0, n - first[name][0]) / span,
                       "shots_per_s": max(0, shots - first[name][1]) / span}
                for name, (n, shots) in last.items() if name in first}

    def view(self, plot: str | None = None) -> dict[str, Any]:
        """What the page shows of the daemon (JSON-ready), with the last measurement's arrays
        of system ``plot``."""
        with self._cond:
            snapshot, rates = self._latest, self._rates()
            link = {"endpoint": self.endpoint, "connected": snapshot.reply is not None,
                    "since": self._since, "error": snapshot.error, "restarts": self.restarts}
        reply = snapshot.reply
        if reply is None:
            return {**link, "daemon": None}
        systems = {}
        for name, s in reply["systems"].items():
            last = s.get("last")
            if last is not None and name == plot:
                with contextlib.suppress(KeyError):
                    last = {**last, **{k: snapshot.arrays[f"{name}/{k}"].tolist()
                                       for k in ("x", "theta", "y")}}
            shown = {k: v for k, v in s.items() if k not in HISTOGRAMS}
            systems[name] = {**shown, "last": last, "rates": rates.get(
                name, {"requests_per_s": 0.0, "shots_per_s": 0.0})}
        return {**link, "daemon": {**reply, "systems": systems}}
