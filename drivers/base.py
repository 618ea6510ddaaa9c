"""The instrument interface shared by real and simulated drivers.

A physical system is driven by two instruments:

* a ``Drive`` sets the control of one shot: a DAC or arbitrary waveform generator plays a
  waveform of ``channels`` samples; a pulse shaper sets ``channels`` spectral amplitudes;
* a ``Detector`` measures the response of each shot: an ADC or oscilloscope records
  ``samples`` samples; a spectrometer reads ``samples`` pixels.

One measurement of ``B`` shots is, in this order: ``detector.arm(B)``, ``drive.output(patterns)``
with ``patterns`` of shape ``[B, channels]`` in drive units (volts, mask transmission...),
``detector.read()`` returning ``[B, samples]`` in detector units. A drive that can hold at most
``max_shots`` patterns at a time (a pulse shaper holds one) is fed in chunks by the caller.

Every driver checks ``limits`` before a value reaches the instrument (hardware protection),
raises ``InstrumentError`` naming itself and the failing command, and can be closed and opened
again after a fault. Drivers know nothing of ZeroMQ, the daemon or training.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

#: Arrays up to this many elements are reduced as Python floats: numpy's reductions cost a few
#: microseconds each however small the array, a list of a few dozen floats far less.
SMALL = 64


def span(a: np.ndarray) -> tuple[float, float]:
    """Smallest and largest element of a non-empty float array; NaN in both if any element is
    NaN or infinite."""
    if a.size <= SMALL:
        values = a.ravel().tolist()
        # min/max of a list skip NaN depending on its position; a finite sum rules NaN and
        # inf out (a sum that is not finite, overflow included, leaves the answer to numpy)
        if math.isfinite(sum(values)):
            return min(values), max(values)
    lo, hi = float(a.min()), float(a.max())  # NaN propagates into both
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    return math.nan, math.nan


class InstrumentError(Exception):
    """An instrument failed. ``retryable`` says whether reopening and retrying may succeed."""

    def __init__(self, instrument: str, message: str, command: str | None = None,
                 retryable: bool = True) -> None:
        where = f"{instrument}" + (f" ({command})" if command else "")
        super().__init__(f"{where}: {message}")
        self.instrument = instrument
        self.command = command
        self.retryable = retryable


class LimitError(ValueError):
    """A value outside an instrument's configured safe range; nothing was sent."""


class Instrument(ABC):
    """Base of every driver: a named instrument that can be opened, identified and closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_open = False

    def open(self) -> None:
        """Connect and check the instrument's identity. Idempotent."""
        self.is_open = True

    def close(self) -> None:
        """Release the instrument. Idempotent; never raises for an already dead link."""
        self.is_open = False

    @abstractmethod
    def identify(self) -> str:
        """The instrument's own identification (``*IDN?`` or equivalent)."""

    def health(self) -> dict[str, Any]:
        """A small JSON-able report of the instrument's state for ``status``."""
        return {"open": self.is_open}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LinkedInstrument:
    """Mixin for a driver that talks through one link object (``drivers.visa.scpi.ScpiLink``,
    ``drivers.serial.line.LineLink``): closing closes the link; ``identify`` checks the
    instrument's ``*IDN?`` answer against the class's ``idn_pattern`` (a regular expression)."""

    idn_pattern: str
    link: Any
    is_open: bool

    def close(self) -> None:
        self.link.close()
        self.is_open = False

    def identify(self) -> str:
        return self.link.identify(self.idn_pattern)


class Drive(Instrument):
    """Sets the control of each shot: ``channels`` values within ``limits`` (drive units)."""

    #: Largest number of patterns the instrument holds at once; ``None`` for no limit.
    max_shots: int | None = None

    def __init__(self, name: str, channels: int, limits: tuple[float, float]) -> None:
        super().__init__(name)
        if channels < 1:
            raise ValueError(f"{name}: channels must be positive, got {channels}")
        lo, hi = float(limits[0]), float(limits[1])
        if not lo < hi:
            raise ValueError(f"{name}: limits must be [lo, hi] with lo < hi, got {limits}")
        self.channels = channels
        self.limits = (lo, hi)

    def output(self, patterns: np.ndarray) -> None:
        """Check ``patterns`` ([B, channels]) against the limits, then play them."""
        patterns = np.asarray(patterns)
        if patterns.ndim != 2 or patterns.shape[1] != self.channels:
            raise LimitError(f"{self.name}: patterns must have shape [B, {self.channels}], "
                             f"got {list(patterns.shape)}")
        if self.max_shots is not None and patterns.shape[0] > self.max_shots:
            raise LimitError(f"{self.name}: holds at most {self.max_shots} pattern(s), "
                             f"got {patterns.shape[0]}")
        lo, hi = self.limits
        pmin, pmax = span(patterns)
        if pmin != pmin:  # NaN: the patterns hold NaN or inf
            raise LimitError(f"{self.name}: patterns contain NaN or inf; nothing was sent")
        if pmin < lo or pmax > hi:
            raise LimitError(f"{self.name}: drive [{pmin:g}, {pmax:g}] exceeds the safe range "
                             f"[{lo:g}, {hi:g}]; nothing was sent")
        self._output(patterns)

    @abstractmethod
    def _output(self, patterns: np.ndarray) -> None:
        """Play ``patterns`` (already checked); return when the instrument has them."""


class Detector(Instrument):
    """Measures ``samples`` values per shot."""

    def __init__(self, name: str, samples: int) -> None:
        super().__init__(name)
        if samples < 1:
            raise ValueError(f"{name}: samples must be positive, got {samples}")
        self.samples = samples

    def arm(self, shots: int) -> None:
        """Prepare to record ``shots`` shots (set up a trigger, a segment count...)."""

    @abstractmethod
    def read(self) -> np.ndarray:
        """The response of the shots armed for, as ``[shots, samples]``."""
