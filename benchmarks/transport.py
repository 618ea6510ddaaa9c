"""Transport overhead: ``forward`` round trips on loopback systems against a raw pyzmq echo.

One daemon (a ``LocalDaemon`` subprocess) serves inline loopback systems, one per input size,
with no store. An echo server in a second subprocess is the transport's physical limit here: a
bare pyzmq ROUTER that answers each message with a frame as large as ``y``. For every payload
``B x D`` float32 the client alternates one labd round trip (``LabClient.measure``: encode,
send, daemon checks and measures, reply, decode) and one raw round trip (a DEALER sending the
same bytes as ``x`` and ``theta`` in two frames, waiting for the ``y``-sized reply), so drift of
a noisy machine hits both alike. ``ratio`` is labd's median over the raw median.

A second echo, ``reqrep``, is the issue's baseline as worded: a pyzmq REP socket that sends
every received message back as it came (``x`` and ``theta``, so twice ``y``'s bytes on the way
back), both ends with pyzmq's own ``send_multipart`` / ``recv_multipart``; it moves more bytes
and spends more Python than the tight echo, so ``reqrep_ratio`` (labd over it) is the lenient
figure and ``ratio`` the strict one.

A third server in a third subprocess, the *floor*, shows what any Python daemon must pay on
top of the raw echo: the least work a forward takes in Python with numpy (parse the JSON
header, view the arrays, check ``x`` and ``theta`` against their ranges, ``y = x + theta``,
check ``y`` finite, answer a JSON header and ``y``), without labd's layers (no drivers, no
sequence numbers, no reply cache, no error handling, nothing configurable). Its client is as
bare: a formatted header out, ``json.loads`` and ``frombuffer`` back. ``floor_ratio`` is its
median over the raw median, measured in the same interleaved loop.

With ``--monitor`` the daemon also serves the monitor page and ``/metrics`` (``labd serve
--http``), and a fourth subprocess fetches the page's JSON (with a plot) and ``/metrics`` once a
second, as an open page and an eager Prometheus would: run it interleaved with runs without,
to see what they cost a forward.

Figures: per payload ``payload_bytes`` (bytes of ``x``, which is also the size of ``y``),
``request_bytes`` (x and theta), medians, p50 and p99 of each (microseconds), ``ratio``,
``reqrep_ratio`` and ``floor_ratio``. Targets: ratio at most 1.2 at 256 KiB (16 x 4096) and
at most 1.5 for small payloads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks import runner
from benchmarks.configs import loopback
from labd.client import LabClient
from labd.daemon.process import LocalDaemon, free_port
from protocols.transport import recv_frames, send_frames

DESCRIPTION = "forward round trips on the loopback against a raw pyzmq echo, 48 B to 4 MiB"

#: (rows, input_dim) of each payload, small to large; 16 x 4096 is the 256 KiB target size.
PAYLOADS = ((1, 12), (1, 256), (16, 256), (1, 4096), (16, 1024), (16, 4096), (64, 4096),
            (256, 4096))
QUICK_PAYLOADS = ((1, 12), (16, 4096))

#: What the transport's loopbacks add to ``benchmarks.configs.loopback``.
SYSTEM_MORE = "max_batch = 4096\nrecord = false\n"

#: ``benchmarks.servers``, run from the checkout that holds it.
CHECKOUT = Path(__file__).parents[1]


#: With ``--monitor``: the page's JSON and ``/metrics`` fetched once a second.
POLLER = """
import sys, time, urllib.request
while True:
    for path in ("api/state?plot=lb12", "metrics"):
        try:
            urllib.request.urlopen(sys.argv[1] + path, timeout=5).read()
        except OSError:
            pass
    time.sleep(1.0)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    runner.add_duration(p, 4.0, "payload size, both sides together",
                        "two payload sizes and 0.5 s each")
    p.add_argument("--monitor", action="store_true",
                   help="with the monitor page and /metrics served (labd serve --http) and "
                        "polled once a second")


def main(args: argparse.Namespace) -> dict[str, Any]:
    payloads = QUICK_PAYLOADS if args.quick else PAYLOADS
    seconds = runner.seconds(args)
    rows = run(payloads, seconds, args.monitor)
    for r in rows:
        print(f"{r['rows']:>4} x {r['dim']:<5} {r['payload_bytes']:>9} B   labd "
              f"{r['labd_median_us']:8.1f} us (p99 {r['labd_p99_us']:8.1f})   raw "
              f"{r['raw_median_us']:8.1f} us (p99 {r['raw_p99_us']:8.1f})   ratio "
              f"{r['ratio']:.2f}   floor {r['floor_median_us']:8.1f} us, "
              f"ratio {r['floor_ratio']:.2f}   REQ/REP echo {r['reqrep_median_us']:8.1f} us, "
              f"labd over it {r['reqrep_ratio']:.2f}")
    return {"seconds_per_payload": seconds, "monitor": args.monitor, "rows": rows}


def _config(dims: set[int]) -> str:
    return "".join(loopback(f"lb{d}", d, SYSTEM_MORE) for d in sorted(dims))


def _percentiles(times_s: list[float]) -> tuple[float, float, float]:
    a = np.asarray(times_s) * 1e6
    return float(np.median(a)), float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _floor_forward(sock: zmq.Socket, n: int, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """One forward through the floor server, with a client as bare as the server."""
    head = (f'{{"v":1,"id":"floor-{n}","op":"forward","system":"lb","arrays":[{{"name":"x",'
            f'"dtype":"float32","shape":[{x.shape[0]},{x.shape[1]}]}},{{"name":"theta",'
            f'"dtype":"float32","shape":[{theta.shape[0]}]}}]}}')
    send_frames(sock, [head.encode(), x, theta])
    reply = recv_frames(sock)
    shape = json.loads(reply[0].bytes)["arrays"][0]["shape"]
    return np.frombuffer(reply[1].buffer, np.float32).reshape(shape)


def _measure(client: LabClient, raw: zmq.Socket, floor: zmq.Socket, reqrep: zmq.Socket,
             rows: int, dim: int, seconds: float) -> dict[str, Any]:
    rng = np.random.default_rng(rows * 100003 + dim)
    x = rng.uniform(-0.5, 0.5, (rows, dim)).astype(np.float32)
    theta = rng.uniform(-0.5, 0.5, dim).astype(np.float32)
    system = f"lb{dim}"
    for i in range(10):  # warm up every path
        client.measure(system, x, theta)
        send_frames(raw, [b"", x, theta])
        recv_frames(raw)
        _floor_forward(floor, i, x, theta)
        reqrep.send_multipart([x, theta], copy=False)
        reqrep.recv_multipart(copy=False)
    times: dict[str, list[float]] = {"labd": [], "raw": [], "floor": [], "reqrep": []}
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline or n < 20:
        n += 1
        began = time.perf_counter()
        client.measure(system, x, theta)
        labd_done = time.perf_counter()
        send_frames(raw, [b"", x, theta])
        recv_frames(raw)
        raw_done = time.perf_counter()
        _floor_forward(floor, n, x, theta)
        floor_done = time.perf_counter()
        reqrep.send_multipart([x, theta], copy=False)
        reqrep.recv_multipart(copy=False)
        reqrep_done = time.perf_counter()
        times["labd"].append(labd_done - began)
        times["raw"].append(raw_done - labd_done)
        times["floor"].append(floor_done - raw_done)
        times["reqrep"].append(reqrep_done - floor_done)
    row: dict[str, Any] = {"rows": rows, "dim": dim, "payload_bytes": x.nbytes,
                           "request_bytes": x.nbytes + theta.nbytes, "round_trips": n}
    for name, t in times.items():
        median, p50, p99 = _percentiles(t)
        row.update({f"{name}_median_us": median, f"{name}_p50_us": p50, f"{name}_p99_us": p99})
    row["ratio"] = row["labd_median_us"] / row["raw_median_us"]
    row["floor_ratio"] = row["floor_median_us"] / row["raw_median_us"]
    row["reqrep_ratio"] = row["labd_median_us"] / row["reqrep_median_us"]
    return row


def wait_page(url: str, timeout_s: float = 60.0) -> None:
    """Wait until the monitor page at ``url`` shows the daemon connected."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "api/state",
                                                                  timeout=5) as r:
            if json.load(r)["link"]["connected"]:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the monitor page at {url} did not show the daemon")


def run(payloads: tuple[tuple[int, int], ...] = PAYLOADS,
        seconds: float = 4.0, monitor: bool = False) -> list[dict[str, Any]]:
    """One row of figures per ``(rows, dim)`` payload (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="labd-bench-transport-") as tmp:
        config = Path(tmp) / "loopback.toml"
        config.write_text(_config({d for _, d in payloads}))
        ctx = zmq.Context.instance()
        servers: list[subprocess.Popen] = []
        sockets: list[tuple[zmq.Socket, list[bytes]]] = []
        for name, stop, kind in (("echo", [b"", b"stop"], zmq.DEALER),
                                 ("floor", [b"stop"], zmq.DEALER), ("reqrep", [b"stop"], zmq.REQ)):
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.servers", name, endpoint], cwd=CHECKOUT))
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sockets.append((sock, stop))
        (raw, _), (floor, _), (reqrep, _) = sockets
        web = f"127.0.0.1:{free_port()}"
        poller: subprocess.Popen | None = None
        try:
            with LocalDaemon(config=config, extra_args=["--http", web] if monitor else []
                             ) as daemon, LabClient(daemon.endpoint) as client:
                if monitor:
                    wait_page(f"http://{web}/")
                    poller = subprocess.Popen([sys.executable, "-c", POLLER, f"http://{web}/"])
                return [_measure(client, raw, floor, reqrep, r, d, seconds)
                        for r, d in payloads]
        finally:
            if poller is not None:
                poller.kill()
                poller.wait()
            for (sock, stop), server in zip(sockets, servers, strict=True):
                with contextlib.suppress(zmq.ZMQError):  # a REQ caught between send and recv
                    sock.send_multipart(stop)
                sock.close()
                try:
                    server.wait(5)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


if __name__ == "__main__":
    raise SystemExit(runner.run(__spec__.name, DESCRIPTION, add_arguments, main))
