"""The simulated bench behind the protocol emulators.

An ``EmulatedRig`` is one system's mapping and simulated bench (a ``labd.benches`` entry point,
see ``drivers.plugins``), shared by the emulated instruments of that rig: a drive front end
calls ``play(patterns)`` (waveform instruments) or sets ``mask`` (a pulse shaper), a detector
front end calls ``play`` or ``sweep()``. The system is a ``[systems.NAME]`` table of
``rigs.toml`` beside this module (``--rig NAME``) or of any labd configuration file; only its
kind, mapping keys, physics and bench table are read. A kind with no registered bench runs on
the loopback bench, with a warning on stderr.
"""

from __future__ import annotations

import sys
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers import plugins
from drivers.physics.encoding import Mapping
from drivers.rig import build_bench
from drivers.sim.bench import Bench

RIGS = Path(__file__).with_name("rigs.toml")


@dataclass
class EmulatedRig:
    name: str
    kind: str
    mapping: Mapping
    bench: Bench
    #: The system's ``[systems.NAME]`` table as read (its ``drive`` and ``detector`` tables
    #: tell the emulators how the rig is wired).
    table: dict[str, Any]
    #: The pattern a one-pattern drive (pulse shaper) currently holds, ``[channels]``.
    mask: np.ndarray | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def channels(self) -> int:
        return self.mapping.channels

    def play(self, patterns: np.ndarray) -> np.ndarray:
        """The bench's trace ``[B, samples]`` of ``patterns`` ``[B, channels]`` (drive units)."""
        with self.lock:
            self.bench.load(np.asarray(patterns, dtype=np.float64))
            return self.bench.measure()

    def sweep(self) -> np.ndarray:
        """The trace ``[samples]`` of the mask the one-pattern drive holds (zeros if none)."""
        mask = self.mask if self.mask is not None else np.zeros(self.channels)
        return self.play(mask[None, :])[0]


def systems_of(config: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The ``[systems.NAME]`` tables of ``config`` (default ``rigs.toml``), by name."""
    with Path(config or RIGS).open("rb") as f:
        return tomllib.load(f).get("systems", {})


def system_table(name: str, config: str | Path | None = None) -> dict[str, Any]:
    """The ``[systems.NAME]`` table of ``config`` (default ``rigs.toml``)."""
    systems = systems_of(config)
    if name not in systems:
        raise KeyError(f"no system {name!r} in {config or RIGS}; systems: {sorted(systems)}")
    return systems[name]


def load_rig(name: str, config: str | Path | None = None, seed: int = 0,
             timing: str = "fast") -> EmulatedRig:
    """System ``name`` of ``config`` (default ``rigs.toml``) on a fresh bench seeded ``seed``."""
    table = system_table(name, config)
    kind, mapping = table["kind"], Mapping.from_table(table)
    options = {k: v for k, v in (table.get("bench") or {}).items() if k not in ("seed", "timing")}
    physics = table.get("physics", {})
    if "type" not in options and kind not in plugins.registered("bench"):
        print(f"emulator: no simulated bench registered for kind {kind!r}; using loopback",
              file=sys.stderr)
        options, physics = {"type": "loopback"}, {}
    bench = build_bench(kind, mapping, physics, {**options, "seed": seed, "timing": timing})
    return EmulatedRig(name, kind, mapping, bench, table)
