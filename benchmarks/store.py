"""The measurement store's cost on the serving path: forward round trips with and without it.

Two daemons serve the same inline loopback (``input_dim = param_dim = output_dim = dim``; at the
default 65536 each of x, theta and y is 256 KiB for one row), one recording into a fresh store
in a temporary directory, one recording nothing. One client alternates requests between them
(so drift of the machine hits both alike) and times each round trip. ``ratio`` is the median
round trip with the store over the one without (target: at most 1.1). With ``clients > 1``
that many threads each run ``round_trips`` interleaved requests concurrently, which exercises
group commit.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.configs import loopback
from labd.client import LabClient
from labd.daemon.process import LocalDaemon

DESCRIPTION = "forward round trips (256 KiB payloads) with and without the measurement store"

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round-trips", type=int, default=300,
                   help="timed requests per daemon and client (default 300)")
    p.add_argument("--dim", type=int, default=65536,
                   help="input, parameter and output size (default 65536: 256 KiB each)")
    p.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1)")
    p.add_argument("--synchronous", choices=["normal", "full"], default="normal",
                   help="the store's synchronous mode (default normal)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    return measure_overhead(args.round_trips, args.dim, args.clients, args.synchronous)


def _client_loop(endpoints: tuple[str, str], round_trips: int, dim: int, seed: int,
                 times: tuple[list[float], list[float]]) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, 0.5, (1, dim)).astype(np.float32)
    theta = rng.uniform(-0.5, 0.5, dim).astype(np.float32)
    with LabClient(endpoints[0]) as plain, LabClient(endpoints[1]) as stored:
        for client in (plain, stored):  # warm up connections and the store file
            for _ in range(5):
                client.measure("loopback", x, theta)
        for _ in range(round_trips):
            for client, out in ((plain, times[0]), (stored, times[1])):
                began = time.perf_counter()
                client.measure("loopback", x, theta)
                out.append(time.perf_counter() - began)


def measure_overhead(round_trips: int = 300, dim: int = 65536, clients: int = 1,
                     synchronous: str = "normal") -> dict[str, Any]:
    """Round-trip figures (seconds) without and with the store, and their ratio."""
    with tempfile.TemporaryDirectory(prefix="labd-bench-store-") as tmp:
        config = Path(tmp) / "loopback.toml"
        config.write_text(f'[store]\nsynchronous = "{synchronous}"\n' + loopback("loopback", dim))
        store = Path(tmp) / "bench.sqlite"
        times: tuple[list[float], list[float]] = ([], [])
        with LocalDaemon(config=config) as plain, LocalDaemon(config=config, store=store) as rec:
            threads = [threading.Thread(target=_client_loop, args=(
                (plain.endpoint, rec.endpoint), round_trips, dim, i, times))
                for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        store_bytes = store.stat().st_size
        blobs = store.with_name(store.name + ".labd-blobs")  # labd.store.segments
        blob_bytes = sum(f.stat().st_size for f in blobs.glob("*.seg")) if blobs.is_dir() else 0
    without, with_ = statistics.median(times[0]), statistics.median(times[1])
    return {
        "dim": dim, "payload_bytes_per_array": dim * 4, "clients": clients,
        "synchronous": synchronous, "round_trips": len(times[0]),
        "median_without_s": without, "median_with_s": with_,
        "mean_without_s": statistics.fmean(times[0]), "mean_with_s": statistics.fmean(times[1]),
        "p90_without_s": float(np.percentile(times[0], 90)),
        "p90_with_s": float(np.percentile(times[1], 90)),
        "ratio": with_ / without,
        "ratio_mean": statistics.fmean(times[1]) / statistics.fmean(times[0]),
        "store_file_bytes": store_bytes,  # the SQLite file (metadata)
        "store_blob_bytes": blob_bytes,  # its segment files (the arrays)
    }


if __name__ == "__main__":
    from benchmarks import runner

    raise SystemExit(runner.run(__spec__.name, DESCRIPTION, add_arguments, main))
