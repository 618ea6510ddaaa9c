"""Simulated instruments: drives and detectors in front of a simulated ``Bench``.

They behave as the real drivers do (range limits, open/close, identify) and hand the physics
to the bench they share. A detector given ``faults = {...}`` (see ``drivers.sim.faults``) fails
as real instruments do: hangs, garbled replies, dropped links, late shots; a drive the same
way, bar garbled replies. One class per role,
so configurations read like the rig: ``SimPulseShaper`` + ``SimSpectrometer`` (SHG),
``SimDAC`` + ``SimADC`` (plate, oscillator, loopback).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from drivers.base import Detector, Drive, Instrument, InstrumentError
from drivers.sim.bench import Bench
from drivers.sim.faults import FaultInjector


class _OnBench(Instrument):
    """What the simulated drive and detector share: the bench, the injected faults, the link
    (up again after ``close()`` and ``open()``, as a real link is after a reconnect)."""

    def _attach(self, bench: Bench, faults: dict[str, Any] | None) -> None:
        self.bench = bench
        self.faults = FaultInjector(**{"seed": bench.seed, **(faults or {})})
        self._link_down = False

    @property
    def connected(self) -> bool:
        return not self._link_down

    def connect(self) -> None:
        self._link_down = False

    def identify(self) -> str:
        return f"labd,{type(self).__name__},{type(self.bench).__name__} seed {self.bench.seed}"

    def _call(self, command: str) -> str | None:
        """Check the link and draw this call's fault: raise for a closed instrument, a dropped
        link or a hang, sleep through a slow call; return the fault drawn (the caller garbles
        its own reply)."""
        if not self.is_open:
            raise InstrumentError(self.name, "not open", command)
        if self._link_down:
            raise InstrumentError(self.name, "no answer: the link is down", command)
        fault = self.faults.draw()
        if fault == "disconnect":
            self._link_down = True
            raise InstrumentError(self.name, "connection lost (injected)", command)
        if fault == "timeout":
            time.sleep(self.faults.hang_s)
            raise InstrumentError(self.name, f"timed out after {self.faults.hang_s:g} s "
                                  "(injected)", command)
        if fault == "slow":
            time.sleep(self.faults.slow_s)
        return fault


class SimDrive(_OnBench, Drive):
    def __init__(self, name: str, channels: int, limits: tuple[float, float],
                 bench: Bench, faults: dict[str, Any] | None = None) -> None:
        super().__init__(name, channels, limits)
        self._attach(bench, faults)
        if self.faults.garbage:
            raise ValueError(f"{name}: a drive returns nothing to garble; its faults are "
                             f"timeout, disconnect and slow")

    def _output(self, patterns: np.ndarray) -> None:
        self._call("output")
        self.bench.load(patterns)


class SimDetector(_OnBench, Detector):
    def __init__(self, name: str, samples: int, bench: Bench,
                 faults: dict[str, Any] | None = None) -> None:
        super().__init__(name, samples)
        if samples != bench.samples:
            raise ValueError(f"{name}: the bench produces {bench.samples} samples per shot, "
                             f"configured {samples}")
        self._attach(bench, faults)

    def read(self) -> np.ndarray:
        fault = self._call("read")
        trace = self.bench.measure()
        return self.faults.garble(trace) if fault == "garbage" else trace


class SimDAC(SimDrive):
    """A simulated DAC: plays ``channels`` samples per shot at the bench's sample rate."""


class SimADC(SimDetector):
    """A simulated ADC: records ``samples`` samples per shot."""


class SimPulseShaper(SimDrive):
    """A simulated pulse shaper: sets ``channels`` spectral amplitudes (0..1) per shot."""


class SimSpectrometer(SimDetector):
    """A simulated spectrometer: reads ``samples`` pixels per shot."""
