"""Stand-in throughput: shots per second of each simulated system, in-process, fast timing.

Each stand-in of the embedded default configuration (``labd/default.toml``: SHG at the vowel
network's size, plate and oscillator at 784 inputs) is built as the daemon builds it
(``PhysicalSystem.from_config``, fast timing) and measured directly, without a daemon: the
figure is the simulator's own cost per shot including encoding and decoding, i.e. how fast a
simulated rig can feed a trainer or a twin collection. Batches of ``max_batch`` shots with
random inputs and parameters in range; each system runs for ``--seconds`` after one warm-up
batch (numba compilation, FFT plans).

Targets on the 2-core reference machine: SHG at least 50,000 shots/s; plate and oscillator at
least 2,000 (aim 10,000).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks import runner
from labd.config import load_config
from labd.daemon.system import PhysicalSystem

DESCRIPTION = "shots per second of each simulated stand-in in fast timing, in-process"

SYSTEMS = ("shg", "plate", "oscillator")
TARGETS = {"shg": 50_000, "plate": 2_000, "oscillator": 2_000}


def add_arguments(p: argparse.ArgumentParser) -> None:
    runner.add_duration(p, 5.0, "system", "0.5 s per system")


def main(args: argparse.Namespace) -> dict[str, Any]:
    seconds = runner.seconds(args)
    figures = {name: shots_per_second(name, seconds) for name in SYSTEMS}
    for name, f in figures.items():
        print(f"{name:<11} {f['shots_per_s']:>10.0f} shots/s   batch {f['batch']:>5}   "
              f"{f['us_per_shot']:8.2f} us/shot   target {TARGETS[name]}")
    return {"seconds_per_system": seconds,
            "systems": {name: f["shots_per_s"] for name, f in figures.items()},
            "details": figures}


def shots_per_second(name: str, seconds: float = 5.0) -> dict[str, Any]:
    """Throughput of the default configuration's system ``name`` in fast timing."""
    config = load_config().systems[name]
    config = config.model_copy(update={"bench": {**(config.bench or {}), "timing": "fast"}})
    system = PhysicalSystem.from_config(name, config)
    batch = system.chunk
    rng = np.random.default_rng(0)
    m = config.mapping
    (xl, xh), (tl, th) = m.input_range, m.param_range
    x = rng.uniform(xl, xh, (batch, m.input_dim)).astype(np.float32)
    theta = rng.uniform(tl, th, m.param_dim).astype(np.float32)
    system.open()
    try:
        system.measure(x, theta)  # warm-up: compilation, plans, caches
        shots, began = 0, time.perf_counter()
        while True:
            system.measure(x, theta)
            shots += batch
            elapsed = time.perf_counter() - began
            if elapsed >= seconds:
                break
    finally:
        system.close()
    return {"shots_per_s": shots / elapsed, "batch": batch, "shots": shots,
            "us_per_shot": 1e6 * elapsed / shots, "target": TARGETS[name]}


if __name__ == "__main__":
    raise SystemExit(runner.run(__spec__.name, DESCRIPTION, add_arguments, main))
