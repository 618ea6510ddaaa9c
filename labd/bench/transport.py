"""Transport overhead: ``forward`` round trips on loopback systems against a raw pyzmq echo.

One daemon (a ``LocalDaemon`` subprocess) serves inline loopback systems, one per input size,
with no store. An echo server in a second subprocess is the transport's physical limit here: a
bare pyzmq ROUTER that answers each message with a frame as large as ``y``. For every payload
``B x D`` float32 the client alternates one labd round trip (``LabClient.measure``: encode,
send, daemon checks and measures, reply, decode) and one raw round trip (a DEALER sending the
same bytes as ``x`` and ``theta`` in two frames, waiting for the ``y``-sized reply), so drift of
a noisy machine hits both alike. ``ratio`` is labd's median over the raw median.

Figures: per payload ``payload_bytes`` (bytes of ``x``, which is also the size of ``y``),
``request_bytes`` (x and theta), medians, p50 and p99 of both (microseconds), and ``ratio``.
Targets: ratio at most 1.2 at 256 KiB (16 x 4096) and at most 1.5 for small payloads.
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
import zmq

from labd.client import LabClient
from labd.daemon.process import LocalDaemon, free_port
from protocols.transport import recv_frames, send_frames

DESCRIPTION = "forward round trips on the loopback against a raw pyzmq echo, 48 B to 4 MiB"

#: (rows, input_dim) of each payload, small to large; 16 x 4096 is the 256 KiB target size.
PAYLOADS = ((1, 12), (1, 256), (16, 256), (1, 4096), (16, 1024), (16, 4096), (64, 4096),
            (256, 4096))
QUICK_PAYLOADS = ((1, 12), (16, 4096))

SYSTEM = """
[systems.lb{dim}]
kind = "loopback"
input_dim = {dim}
param_dim = {dim}
output_dim = {dim}
input_range = [-1.0, 1.0]
param_range = [-1.0, 1.0]
max_batch = 4096
inline = true
record = false
encoding = {{ layout = "add" }}
bench = {{ seed = 0, timing = "fast" }}
drive = {{ driver = "sim.dac" }}
detector = {{ driver = "sim.adc" }}
"""

#: The raw echo server: a ROUTER answering [identity, "", x, theta] with [identity, "", y],
#: ``y`` being a preallocated frame of x's size (what the loopback answers), zero-copy. It
#: sends and receives with the same lean calls as labd (``protocols.transport``), so that the
#: comparison measures labd's own work and not a difference in how pyzmq is called.
ECHO = """
import sys, zmq
from protocols.transport import recv_frames, send_frames
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.bind(sys.argv[1])
replies = {}
while True:
    msg = recv_frames(s)
    if len(msg) == 3 and msg[2].bytes == b"stop":
        break
    n = len(msg[2])
    y = replies.get(n)
    if y is None:
        y = replies[n] = zmq.Frame(bytes(n))
    send_frames(s, [msg[0], b"", y])
s.close(linger=0)
ctx.term()
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=4.0,
                   help="wall time spent per payload size, both sides together (default 4)")
    p.add_argument("--quick", action="store_true",
                   help="two payload sizes and 0.5 s each (a smoke test)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    payloads = QUICK_PAYLOADS if args.quick else PAYLOADS
    seconds = 0.5 if args.quick else args.seconds
    rows = run(payloads, seconds)
    for r in rows:
        print(f"{r['rows']:>4} x {r['dim']:<5} {r['payload_bytes']:>9} B   labd "
              f"{r['labd_median_us']:9.1f} us (p99 {r['labd_p99_us']:9.1f})   raw "
              f"{r['raw_median_us']:9.1f} us (p99 {r['raw_p99_us']:9.1f})   ratio "
              f"{r['ratio']:.2f}")
    return {"seconds_per_payload": seconds, "rows": rows}


def _config(dims: set[int]) -> str:
    return "".join(SYSTEM.format(dim=d) for d in sorted(dims))


def _percentiles(times_s: list[float]) -> tuple[float, float, float]:
    a = np.asarray(times_s) * 1e6
    return float(np.median(a)), float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _measure(client: LabClient, raw: zmq.Socket, rows: int, dim: int,
             seconds: float) -> dict[str, Any]:
    rng = np.random.default_rng(rows * 100003 + dim)
    x = rng.uniform(-0.5, 0.5, (rows, dim)).astype(np.float32)
    theta = rng.uniform(-0.5, 0.5, dim).astype(np.float32)
    system = f"lb{dim}"
    for _ in range(10):  # warm up both paths
        client.measure(system, x, theta)
        send_frames(raw, [b"", x, theta])
        recv_frames(raw)
    labd_t: list[float] = []
    raw_t: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(labd_t) < 20:
        began = time.perf_counter()
        client.measure(system, x, theta)
        middle = time.perf_counter()
        send_frames(raw, [b"", x, theta])
        recv_frames(raw)
        ended = time.perf_counter()
        labd_t.append(middle - began)
        raw_t.append(ended - middle)
    lm, l50, l99 = _percentiles(labd_t)
    rm, r50, r99 = _percentiles(raw_t)
    return {"rows": rows, "dim": dim, "payload_bytes": x.nbytes,
            "request_bytes": x.nbytes + theta.nbytes, "round_trips": len(labd_t),
            "labd_median_us": lm, "labd_p50_us": l50, "labd_p99_us": l99,
            "raw_median_us": rm, "raw_p50_us": r50, "raw_p99_us": r99, "ratio": lm / rm}


def run(payloads: tuple[tuple[int, int], ...] = PAYLOADS,
        seconds: float = 4.0) -> list[dict[str, Any]]:
    """One row of figures per ``(rows, dim)`` payload (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="labd-bench-transport-") as tmp:
        config = Path(tmp) / "loopback.toml"
        config.write_text(_config({d for _, d in payloads}))
        echo_endpoint = f"tcp://127.0.0.1:{free_port()}"
        echo = subprocess.Popen([sys.executable, "-c", ECHO, echo_endpoint])
        ctx = zmq.Context.instance()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(echo_endpoint)
        try:
            with LocalDaemon(config=config) as daemon, LabClient(daemon.endpoint) as client:
                return [_measure(client, raw, r, d, seconds) for r, d in payloads]
        finally:
            raw.send_multipart([b"", b"stop"])
            raw.close()
            try:
                echo.wait(5)
            except subprocess.TimeoutExpired:
                echo.kill()
                echo.wait()
