"""The simulated bench behind the protocol emulators.

An ``EmulatedRig`` is one system's mapping and simulated bench (``drivers.registry.BENCHES``),
shared by the emulated instruments of that rig: a drive front end calls ``play(patterns)``
(waveform instruments) or sets ``mask`` (a pulse shaper), a detector front end calls ``play``
or ``sweep()``. The system comes from ``rigs.toml`` beside this module (``--rig NAME``) or from
any labd configuration file. A kind whose stand-in bench does not exist yet runs on the
loopback bench, with a warning on stderr.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drivers.registry import BENCHES, _load
from drivers.sim.bench import Bench
from labd.config import SystemConfig, load_config

RIGS = Path(__file__).with_name("rigs.toml")


@dataclass
class EmulatedRig:
    name: str
    system: SystemConfig
    bench: Bench
    #: The pattern a one-pattern drive (pulse shaper) currently holds, ``[channels]``.
    mask: np.ndarray | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def channels(self) -> int:
        return self.system.channels

    def play(self, patterns: np.ndarray) -> np.ndarray:
        """The bench's trace ``[B, samples]`` of ``patterns`` ``[B, channels]`` (drive units)."""
        with self.lock:
            self.bench.load(np.asarray(patterns, dtype=np.float64))
            return self.bench.measure()

    def sweep(self) -> np.ndarray:
        """The trace ``[samples]`` of the mask the one-pattern drive holds (zeros if none)."""
        mask = self.mask if self.mask is not None else np.zeros(self.channels)
        return self.play(mask[None, :])[0]


def load_rig(name: str, config: str | Path | None = None, seed: int = 0,
             timing: str = "fast") -> EmulatedRig:
    """System ``name`` of ``config`` (default ``rigs.toml``) on a fresh bench seeded ``seed``."""
    system = load_config(config or RIGS).systems.get(name)
    if system is None:
        raise KeyError(f"no system {name!r} in {config or RIGS}")
    options = {k: v for k, v in (system.bench or {}).items() if k not in ("seed", "timing")}
    if system.kind in BENCHES:
        bench_cls, physics = _load(BENCHES[system.kind]), system.physics
    else:
        print(f"emulator: no simulated bench for kind {system.kind!r} yet; using loopback",
              file=sys.stderr)
        bench_cls, physics, options = _load(BENCHES["loopback"]), {}, {}
    bench = bench_cls(mapping=system, physics=physics, seed=seed, timing=timing, **options)
    return EmulatedRig(name, system, bench)
