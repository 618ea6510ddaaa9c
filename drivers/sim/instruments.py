"""Simulated instruments: drives and detectors in front of a simulated ``Bench``.

They behave as the real drivers do (range limits, open/close, identify) and hand the physics
to the bench they share. One class per role, so configurations read like the rig:
``SimPulseShaper`` + ``SimSpectrometer`` (SHG), ``SimDAC`` + ``SimADC`` (plate, oscillator,
loopback).
"""

from __future__ import annotations

import numpy as np

from drivers.base import Detector, Drive, InstrumentError
from drivers.sim.bench import Bench


class SimDrive(Drive):
    def __init__(self, name: str, channels: int, limits: tuple[float, float],
                 bench: Bench) -> None:
        super().__init__(name, channels, limits)
        self.bench = bench

    def identify(self) -> str:
        return f"labd,{type(self).__name__},{type(self.bench).__name__} seed {self.bench.seed}"

    def _output(self, patterns: np.ndarray) -> None:
        if not self.is_open:
            raise InstrumentError(self.name, "not open", "output")
        self.bench.load(patterns)


class SimDetector(Detector):
    def __init__(self, name: str, samples: int, bench: Bench) -> None:
        super().__init__(name, samples)
        if samples != bench.samples:
            raise ValueError(f"{name}: the bench produces {bench.samples} samples per shot, "
                             f"configured {samples}")
        self.bench = bench

    def identify(self) -> str:
        return f"labd,{type(self).__name__},{type(self.bench).__name__} seed {self.bench.seed}"

    def read(self) -> np.ndarray:
        if not self.is_open:
            raise InstrumentError(self.name, "not open", "read")
        return self.bench.measure()


class SimDAC(SimDrive):
    """A simulated DAC: plays ``channels`` samples per shot at the bench's sample rate."""


class SimADC(SimDetector):
    """A simulated ADC: records ``samples`` samples per shot."""


class SimPulseShaper(SimDrive):
    """A simulated pulse shaper: sets ``channels`` spectral amplitudes (0..1) per shot."""


class SimSpectrometer(SimDetector):
    """A simulated spectrometer: reads ``samples`` pixels per shot."""
