"""The monitor's ``/metrics``: the daemon's counters in Prometheus' format (``prometheus_client``).

A custom collector: at each scrape it takes a ``monitor`` answer polled after the scrape began
(``DaemonWatch.fresh``) and turns it into metric families; nothing is counted twice, nothing
on the daemon's forward path knows of Prometheus. While the daemon is unreachable only
``labd_up 0`` is exported (no stale counters). Counters restart from zero when the daemon
restarts (``labd_start_time_seconds`` changes), which Prometheus' ``rate()`` expects.

Families (``system`` label per physical system):

* ``labd_up``; ``labd_start_time_seconds``; ``labd_info{version, host, endpoint}``
* ``labd_requests_total{system, outcome}``: forward requests by outcome (``ok``, ``cached``,
  ``busy``, ``out_of_range``, ``bad_array``, ``unauthorized``, ``instrument_fault``)
* ``labd_refused_requests_total{code}``: every error reply of the daemon's server thread
  (any operation, named system or not)
* ``labd_shots_total``, ``labd_instrument_seconds_total`` (its ``rate()`` is the duty
  cycle), ``labd_faults_total``, ``labd_reconnects_total``
* ``labd_request_duration_seconds`` (arrival to reply ready, in the daemon) and
  ``labd_instrument_duration_seconds`` (``elapsed_s``): histograms
* ``labd_queue_depth``, ``labd_queue_capacity``, ``labd_busy_fraction_1m``,
  ``labd_system_state{system, state}`` (1 for the current state, 0 for the others)
* ``labd_store_backlog_bytes``, and where the store file is readable here
  ``labd_store_bytes``, ``labd_store_measurements``, ``labd_store_rows``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from labd.web.watch import DaemonWatch

STATES = ("ready", "busy", "fault")
#: (family name, help, key of a system's counters in the ``monitor`` reply)
COUNTERS = (
    ("labd_shots", "Shots (rows of x) measured.", "shots"),
    ("labd_instrument_seconds", "Seconds the instruments spent measuring (rate() = duty cycle).",
     "instrument_s"),
    ("labd_faults", "Instrument faults (watchdog timeouts included).", "faults"),
    ("labd_reconnects", "Instrument reopenings after a fault that succeeded.", "reconnects"),
)
GAUGES = (
    ("labd_queue_depth", "Forward requests waiting in the system's queue.", "queued"),
    ("labd_queue_capacity", "Size of the system's queue (0: measured inline).", "queue_depth"),
    ("labd_busy_fraction_1m", "Instrument time over the last minute's wall time.", "busy_1min"),
)
HISTOGRAMS = (
    ("labd_request_duration_seconds", "Forward requests: arrival to reply ready, in the daemon "
     "(queue wait, measurement, recording).", "latency_s"),
    ("labd_instrument_duration_seconds", "Forward requests: instrument time (elapsed_s).",
     "instrument_time_s"),
)


def _buckets(h: dict[str, Any]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs, ``+Inf`` last, of a ``monitor`` histogram."""
    out, total = [], 0
    for bound, count in zip([*h["le"], "+Inf"], h["counts"], strict=True):
        total += count
        out.append((bound if isinstance(bound, str) else repr(float(bound)), total))
    return out


def _system_families(systems: dict[str, Any]) -> Iterator[Metric]:
    requests = CounterMetricFamily("labd_requests", "Forward requests by system and outcome.",
                                   labels=["system", "outcome"])
    counters = [CounterMetricFamily(n, h, labels=["system"]) for n, h, _ in COUNTERS]
    gauges = [GaugeMetricFamily(n, h, labels=["system"]) for n, h, _ in GAUGES]
    histograms = [HistogramMetricFamily(n, h, labels=["system"]) for n, h, _ in HISTOGRAMS]
    state = GaugeMetricFamily("labd_system_state", "1 for the system's current state.",
                              labels=["system", "state"])
    for name, s in systems.items():
        for outcome, count in s["requests"].items():
            requests.add_metric([name, outcome], count)
        for family, (_, _, key) in zip(counters, COUNTERS, strict=True):
            family.add_metric([name], s[key])
        for family, (_, _, key) in zip(gauges, GAUGES, strict=True):
            family.add_metric([name], s[key])
        for family, (_, _, key) in zip(histograms, HISTOGRAMS, strict=True):
            family.add_metric([name], _buckets(s[key]), s[key]["sum"])
        for st in STATES:
            state.add_metric([name, st], 1.0 if s["state"] == st else 0.0)
    yield from (requests, *counters, *gauges, *histograms, state)


class DaemonCollector(Collector):
    def __init__(self, watch: DaemonWatch, store: Callable[[str | None], dict[str, Any] | None]
                 ) -> None:
        """``store(path)``: the store's summary (``StoreWatch.summary``)."""
        self.watch = watch
        self.store = store

    def collect(self) -> Iterator[Metric]:
        reply = self.watch.fresh().reply
        yield GaugeMetricFamily("labd_up", "1 if the daemon answered the monitor's last poll.",
                                value=0.0 if reply is None else 1.0)
        if reply is None:
            return
        yield GaugeMetricFamily("labd_start_time_seconds", "UNIX time the daemon started.",
                                value=reply["started"])
        info = InfoMetricFamily("labd", "The daemon's version and host.",
                                labels=["version", "host", "endpoint"])
        info.add_metric([reply["version"], reply["host"], self.watch.endpoint], {})
        yield info
        refused = CounterMetricFamily("labd_refused_requests",
                                      "Error replies of the daemon's server thread, by code.",
                                      labels=["code"])
        for code, count in reply["refused"].items():
            refused.add_metric([code], count)
        yield refused
        yield from _system_families(reply["systems"])
        yield from self._store_families(reply.get("store"))

    def _store_families(self, store: dict[str, Any] | None) -> Iterator[Metric]:
        if store is None:
            return
        yield GaugeMetricFamily("labd_store_backlog_bytes", "Bytes recorded (in the store's "
                                "journal) and not yet in its database.",
                                value=store["backlog_bytes"])
        summary = self.store(store["path"])
        if summary is None or not summary["readable"]:
            return
        for key, doc in (("bytes", "Bytes of the store on disk."),
                         ("measurements", "Measurements (requests) in the store."),
                         ("rows", "Rows (shots) in the store.")):
            yield GaugeMetricFamily(f"labd_store_{key}", doc, value=summary[key])
