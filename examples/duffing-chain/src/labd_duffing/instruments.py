"""The rig's two instruments, simulated on the bench: what a lab's drivers look like.

``PiezoDAC``: a 16-bit DAC (+-10 V) through a piezo amplifier; drive values are rounded to its
codes before they reach the piezo. ``CapacitiveADC``: a charge amplifier on the last
resonator's pick-off, then a 16-bit ADC (+-``full_scale`` V) that rounds and clips. A real
rig's drivers would talk to the hardware in ``_output`` and ``read``; these hand the physics to
the ``DuffingChainBench`` they share, so the rest of labd cannot tell the difference.
"""

from __future__ import annotations

import numpy as np

from drivers.base import Detector, Drive, InstrumentError
from drivers.sim.bench import Bench

BITS = 16


def quantise(values: np.ndarray, full_scale: float) -> np.ndarray:
    """``values`` rounded to the codes of a ``BITS``-bit converter over +-``full_scale`` and
    clipped to its range."""
    lsb = 2 * full_scale / 2 ** BITS
    return np.clip(np.rint(values / lsb) * lsb, -full_scale, full_scale - lsb)


class PiezoDAC(Drive):
    """Plays ``channels`` samples per shot on the piezo stack (volts, within ``limits``)."""

    full_scale = 10.0

    def __init__(self, name: str, channels: int, limits: tuple[float, float],
                 bench: Bench) -> None:
        super().__init__(name, channels, limits)
        if min(self.limits) < -self.full_scale or max(self.limits) > self.full_scale:
            raise ValueError(f"{name}: limits {self.limits} exceed the DAC's "
                             f"+-{self.full_scale:g} V")
        self.bench = bench

    def identify(self) -> str:
        return f"labd-duffing,PiezoDAC,simulated,seed {self.bench.seed}"

    def _output(self, patterns: np.ndarray) -> None:
        if not self.is_open:
            raise InstrumentError(self.name, "not open", "output")
        self.bench.load(quantise(patterns, self.full_scale))


class CapacitiveADC(Detector):
    """Reads ``samples`` samples per shot of the last resonator's pick-off (volts)."""

    def __init__(self, name: str, samples: int, bench: Bench, full_scale: float = 2.0) -> None:
        super().__init__(name, samples)
        if samples != bench.samples:
            raise ValueError(f"{name}: the bench produces {bench.samples} samples per shot, "
                             f"configured {samples}")
        self.bench = bench
        self.full_scale = float(full_scale)

    def identify(self) -> str:
        return f"labd-duffing,CapacitiveADC,simulated,seed {self.bench.seed}"

    def read(self) -> np.ndarray:
        if not self.is_open:
            raise InstrumentError(self.name, "not open", "read")
        return quantise(self.bench.measure(), self.full_scale)
