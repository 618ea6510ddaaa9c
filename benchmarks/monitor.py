"""What the monitor page and ``/metrics`` cost a forward: two daemons, one watched, interleaved.

    python -m benchmarks.monitor [--seconds S] [--quick] [--json PATH]

Two ``LocalDaemon`` subprocesses serve the inline loopback systems of ``benchmarks.transport``
(no store); the second also serves the monitor page and ``/metrics`` (``labd serve --http``),
which a poller subprocess fetches once a second (the page's JSON with a plot, and
``/metrics``), as an open page and an eager Prometheus would. For every payload the client
alternates one ``LabClient.measure`` round trip on each daemon, so the drift of a noisy machine
hits both alike.

Figures per payload: ``payload_bytes``, medians and p99 of each daemon's round trips
(microseconds) and ``ratio``, the watched daemon's median over the other's (1.0: no cost).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import runner
from benchmarks.transport import (
    PAYLOADS,
    POLLER,
    QUICK_PAYLOADS,
    _config,
    _percentiles,
    wait_page,
)
from labd.client import LabClient
from labd.daemon.process import LocalDaemon, free_port

DESCRIPTION = "forward round trips with and without the monitor page and /metrics, interleaved"


def add_arguments(p: argparse.ArgumentParser) -> None:
    runner.add_duration(p, 4.0, "payload size, both daemons together",
                        "two payload sizes and 0.5 s each")


def main(args: argparse.Namespace) -> dict[str, Any]:
    payloads = QUICK_PAYLOADS if args.quick else PAYLOADS
    seconds = runner.seconds(args)
    rows = run(payloads, seconds)
    for r in rows:
        print(f"{r['rows']:>4} x {r['dim']:<5} {r['payload_bytes']:>9} B   without "
              f"{r['plain_median_us']:8.1f} us (p99 {r['plain_p99_us']:8.1f})   with page "
              f"and /metrics {r['watched_median_us']:8.1f} us (p99 {r['watched_p99_us']:8.1f})"
              f"   ratio {r['ratio']:.3f}")
    return {"seconds_per_payload": seconds, "rows": rows}


def _measure(plain: LabClient, watched: LabClient, rows: int, dim: int, seconds: float
             ) -> dict[str, Any]:
    rng = np.random.default_rng(rows * 100003 + dim)
    x = rng.uniform(-0.5, 0.5, (rows, dim)).astype(np.float32)
    theta = rng.uniform(-0.5, 0.5, dim).astype(np.float32)
    system = f"lb{dim}"
    for _ in range(10):
        plain.measure(system, x, theta)
        watched.measure(system, x, theta)
    times: dict[str, list[float]] = {"plain": [], "watched": []}
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline or n < 20:
        n += 1
        for name, client in (("plain", plain), ("watched", watched))[:: 1 if n % 2 else -1]:
            began = time.perf_counter()
            client.measure(system, x, theta)
            times[name].append(time.perf_counter() - began)
    row: dict[str, Any] = {"rows": rows, "dim": dim, "payload_bytes": x.nbytes,
                           "round_trips": n}
    for name, t in times.items():
        median, p50, p99 = _percentiles(t)
        row.update({f"{name}_median_us": median, f"{name}_p50_us": p50,
                    f"{name}_p99_us": p99})
    row["ratio"] = row["watched_median_us"] / row["plain_median_us"]
    return row


def run(payloads: tuple[tuple[int, int], ...] = PAYLOADS,
        seconds: float = 4.0) -> list[dict[str, Any]]:
    """One row of figures per ``(rows, dim)`` payload (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="labd-bench-monitor-") as tmp:
        config = Path(tmp) / "loopback.toml"
        config.write_text(_config({d for _, d in payloads}))
        web = f"127.0.0.1:{free_port()}"
        with LocalDaemon(config=config) as a, \
                LocalDaemon(config=config, extra_args=["--http", web]) as b, \
                LabClient(a.endpoint) as plain, LabClient(b.endpoint) as watched:
            wait_page(f"http://{web}/")
            poller = subprocess.Popen([sys.executable, "-c", POLLER, f"http://{web}/"])
            try:
                return [_measure(plain, watched, r, d, seconds) for r, d in payloads]
            finally:
                poller.kill()
                poller.wait()


if __name__ == "__main__":
    raise SystemExit(runner.run(__spec__.name, DESCRIPTION, add_arguments, main))
