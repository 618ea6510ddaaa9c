"""The simulated bench: the physics, hidden imperfections, clock and noise one rig shares.

A bench is what sits on the optical table or lab bench between a simulated drive and a
simulated detector. Contract for every kind:

* ``Bench(mapping=..., physics=..., seed=..., timing=..., **kind_options)``: ``physics`` are the
  nominal parameters (the same the nominal model reads); ``seed`` fixes the hidden device
  imperfections; noise comes from a separate stream.
* ``load(patterns)`` stores the drive patterns ``[B, channels]`` of the next shots: the drive
  plays them, so the shots start; ``measure()`` returns the detector trace ``[B, samples]`` of
  those shots, advancing the drift clock and the noise per shot, and in ``realtime`` timing
  returns no earlier than ``B * shot_s`` after ``load`` (as a triggered acquisition: whatever
  the caller does between output and read overlaps the shots).
* ``samples`` is the trace length per shot; ``shot_s`` the real rig's time per shot.
* ``hidden()`` returns the hidden parameters, for tests only: it never goes over the wire.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Literal

import numpy as np

from drivers.physics.encoding import Mapping

Timing = Literal["fast", "realtime"]


class Bench(ABC):
    samples: int
    shot_s: float = 0.0

    def __init__(self, mapping: Mapping, physics: dict[str, Any], seed: int = 0,
                 timing: Timing = "fast") -> None:
        if timing not in ("fast", "realtime"):
            raise ValueError(f"timing must be 'fast' or 'realtime', got {timing!r}")
        self.mapping = mapping
        self.physics = dict(physics)
        self.seed = seed
        self.timing = timing
        self.device_rng = np.random.default_rng([seed, 0])
        self.noise_rng = np.random.default_rng([seed, 1])
        self.shots = 0  # shots measured since the bench was made: the drift clock
        self._patterns: np.ndarray | None = None
        self._loaded = 0.0  # time.perf_counter() of the last load: the shots' start

    def load(self, patterns: np.ndarray) -> None:
        self._patterns = patterns
        self._loaded = time.perf_counter()

    def measure(self) -> np.ndarray:
        if self._patterns is None:
            raise RuntimeError("measure() before load(): no patterns on the drive")
        patterns, self._patterns = self._patterns, None
        trace = self._respond(patterns)
        self.shots += patterns.shape[0]
        if self.timing == "realtime":
            remaining = patterns.shape[0] * self.shot_s - (time.perf_counter() - self._loaded)
            if remaining > 0:
                time.sleep(remaining)
        return trace

    @abstractmethod
    def _respond(self, patterns: np.ndarray) -> np.ndarray:
        """The detector trace [B, samples] of ``patterns`` [B, channels], noise and drift
        included; ``self.shots`` is the shot count before this batch."""

    def hidden(self) -> dict[str, Any]:
        """The device's hidden parameters (tests only)."""
        return {}
