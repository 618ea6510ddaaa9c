"""The loopback bench: the DAC wired straight to the ADC.

``y`` is the drive read back through the converters' ``gain`` and ``offset`` (physics table),
with no dynamics and no noise. A real lab's first diagnostic (cables, levels, the whole software
path) and the baseline of the transport benchmarks. ``shot_s`` (default 0) gives each shot a
duration in ``realtime`` timing, which makes a deliberately slow system for tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivers.physics.encoding import Mapping
from drivers.sim.bench import Bench, Timing


class LoopbackBench(Bench):
    def __init__(self, mapping: Mapping, physics: dict[str, Any], seed: int = 0,
                 timing: Timing = "fast", shot_s: float = 0.0) -> None:
        super().__init__(mapping, physics, seed, timing)
        self.shot_s = shot_s
        self.gain = float(physics.get("gain", 1.0))
        self.offset = float(physics.get("offset", 0.0))
        self.samples = mapping.channels

    def _respond(self, patterns: np.ndarray) -> np.ndarray:
        if self.gain == 1.0 and self.offset == 0.0:
            return patterns
        return patterns * self.gain + self.offset
