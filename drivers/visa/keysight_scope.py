"""Keysight (Agilent) InfiniiVision oscilloscope as a ``Detector`` (digitiser use).

Family: InfiniiVision 1000X, 2000X, 3000X/3000T, 4000X, 6000X (DSOX/MSOX/EDUX models), same
``:WAVeform`` subsystem, over LAN or USB.

One batch of B shots is one single-shot acquisition at ``sample_rate`` samples/s, started by
the drive's trigger (an edge on ``trigger_source``, normally ``EXTernal`` wired to the AWG's
Sync output), with the first point ``delay_s`` after the trigger. The time base spans
``n = max(B * samples, 100)`` points: ``:WAV:POIN`` below 100 is error -222 (Data out of
range), so a short batch records 100 points on the same grid and keeps the first
``B * samples``. After the record is taken the driver asks for ``n`` points (``:WAV:POIN``
sets the points the next ``:WAV:DATA?`` transfers, out of the record just taken), reads back
how many the scope will give (``:WAV:POIN?``), reads preamble and data, and drains the error
queue, so an error of this acquisition fails this read. A record of another length or on
another time grid is an error naming both, unless ``resample = true``: then it is
interpolated onto the grid, counted in ``health()["resampled"]`` and logged (a warning the
first time).

Commands (``{c}`` is ``channel``):

==============================================  ============================================
``*IDN?``, ``*CLS``, ``:STOP``                  identity check, clear, stop
``:CHAN{c}:DISP ON``, ``:CHAN{c}:RANG v``, ``:CHAN{c}:OFFS v``  input full scale and offset (V)
``:TRIG:MODE EDGE``, ``:TRIG:EDGE:SOUR src``, ``:TRIG:EDGE:SLOP POS``, ``:TRIG:EDGE:LEV v``,
``:TRIG:SWE NORM``                              wait for a real trigger
``:TIM:REF LEFT``, ``:TIM:POS s``, ``:TIM:RANG s``  time window after the trigger
``:ACQ:TYPE NORM``, ``:WAV:SOUR CHAN{c}``, ``:WAV:FORM WORD|BYTE``, ``:WAV:BYT LSBF``,
``:WAV:UNS 0``, ``:WAV:POIN:MODE RAW``          signed codes, little endian, full record
``:SING``, ``:AER?``                            arm one acquisition; wait until armed
``:OPER:COND?``                                 bit 3 (Run) clears when the record is taken
``:WAV:POIN n``, ``:WAV:POIN?``                 points to transfer (>= 100); read back
``:WAV:PRE?``                                   format, type, points, count, x increment (s),
                                                x origin (s), x reference, y increment (V),
                                                y origin (V), y reference
``:WAV:DATA?``                                  the codes, one definite-length block
``:SYST:ERR?``                                  after set-up and after every acquisition
==============================================  ============================================

``volts = (code - y_reference) * y_increment + y_origin``;
``time = (index - x_reference) * x_increment + x_origin``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from drivers.base import Detector, InstrumentError
from drivers.visa.scpi import ScpiInstrument, ScpiLink

IDN_PATTERN = r"(Agilent|Keysight) Technologies,(DSO|MSO|EDU)[A-Z]*\d"
RUN_BIT = 8
#: ``:WAV:POIN`` below this is error -222.
MIN_POINTS = 100
DTYPES = {"WORD": "<i2", "BYTE": "i1"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preamble:
    """The ten fields of ``:WAVeform:PREamble?``."""

    format: int
    type: int
    points: int
    count: int
    x_increment: float
    x_origin: float
    x_reference: float
    y_increment: float
    y_origin: float
    y_reference: float

    @classmethod
    def parse(cls, reply: str) -> Preamble:
        fields = reply.split(",")
        if len(fields) != 10:
            raise ValueError(f"a preamble has 10 fields, got {len(fields)}: {reply!r}")
        v = [float(f) for f in fields]
        return cls(int(v[0]), int(v[1]), int(v[2]), int(v[3]), *v[4:])

    def volts(self, codes: np.ndarray) -> np.ndarray:
        return (codes.astype(np.float64) - self.y_reference) * self.y_increment + self.y_origin

    def times(self, n: int) -> np.ndarray:
        return (np.arange(n) - self.x_reference) * self.x_increment + self.x_origin


class KeysightInfiniiVision(ScpiInstrument, Detector):
    idn_pattern = IDN_PATTERN
    error_query = ":SYST:ERR?"
    reported = ("sample_rate", "resample", "resampled")
    link: ScpiLink

    def __init__(self, name: str, samples: int, resource: str, library: str = "",
                 sample_rate: float = 1e6, channel: int = 1, v_range: float = 8.0,
                 v_offset: float = 0.0, trigger_source: str = "EXTernal",
                 trigger_level: float = 1.0, delay_s: float = 0.0, format: str = "WORD",
                 timeout_s: float = 5.0, acquire_timeout_s: float = 10.0,
                 resample: bool = False) -> None:
        super().__init__(name, samples)
        fmt = format.upper()
        if fmt not in DTYPES:
            raise ValueError(f"{name}: format must be WORD or BYTE, got {format!r}")
        if channel not in (1, 2, 3, 4):
            raise ValueError(f"{name}: channel must be 1..4, got {channel}")
        if not 0 < v_range <= 400:
            raise ValueError(f"{name}: v_range {v_range:g} V outside (0, 400]")
        if sample_rate <= 0:
            raise ValueError(f"{name}: sample_rate must be positive")
        self.sample_rate = float(sample_rate)
        self.channel = channel
        self.v_range = float(v_range)
        self.v_offset = float(v_offset)
        self.trigger_source = trigger_source
        self.trigger_level = float(trigger_level)
        self.delay_s = float(delay_s)
        self.format = fmt
        self.acquire_timeout_s = float(acquire_timeout_s)
        self.resample = bool(resample)
        #: Records that came on another grid and were interpolated (``resample = true``).
        self.resampled = 0
        self.link = ScpiLink(name, resource, library, timeout_s)

    def setup(self) -> list[str]:
        c = self.channel
        return ["*CLS", ":STOP", f":CHAN{c}:DISP ON",
                f":CHAN{c}:RANG {self.v_range:.6g}", f":CHAN{c}:OFFS {self.v_offset:.6g}",
                ":TRIG:MODE EDGE", f":TRIG:EDGE:SOUR {self.trigger_source}",
                ":TRIG:EDGE:SLOP POS", f":TRIG:EDGE:LEV {self.trigger_level:.6g}",
                ":TRIG:SWE NORM", ":TIM:REF LEFT", f":TIM:POS {self.delay_s:.6g}",
                ":ACQ:TYPE NORM", f":WAV:SOUR CHAN{c}", f":WAV:FORM {self.format}",
                ":WAV:BYT LSBF", ":WAV:UNS 0", ":WAV:POIN:MODE RAW"]

    def record_points(self, shots: int) -> int:
        """Points the time base spans for ``shots`` shots (at least ``MIN_POINTS``)."""
        return max(shots * self.samples, MIN_POINTS)

    def arm(self, shots: int) -> None:
        self.link.write(f":TIM:RANG {self.record_points(shots) / self.sample_rate:.6g}")
        self.link.write(":SING")
        self.link.wait_for(":AER?", lambda r: r.strip("+") == "1", self.acquire_timeout_s)
        super().arm(shots)

    def read(self) -> np.ndarray:
        shots = self.armed(":WAV:DATA?")
        points, n = shots * self.samples, self.record_points(shots)
        self.link.wait_for(":OPER:COND?", lambda r: not int(r) & RUN_BIT,
                           self.acquire_timeout_s)
        self.link.write(f":WAV:POIN {n}")
        given = self.link.query(":WAV:POIN?")
        if given.lstrip("+") != str(n):
            self.check_errors(f":WAV:POIN {n}")
            if not self.resample:
                raise InstrumentError(self.name, f"the scope gives {given} points of this "
                                      f"record for :WAV:POIN {n}: choose a sample_rate the "
                                      "scope's time base gives, or set resample = true to "
                                      "interpolate", ":WAV:POIN?", retryable=False)
        reply = self.link.query(":WAV:PRE?")
        try:
            pre = Preamble.parse(reply)
        except ValueError as exc:
            raise InstrumentError(self.name, str(exc), ":WAV:PRE?", retryable=False) from None
        codes = np.frombuffer(self.link.query_block(":WAV:DATA?"), DTYPES[self.format])
        self.check_errors(":WAV:DATA?")
        if codes.size < 2:
            raise InstrumentError(self.name, f"the record holds {codes.size} points",
                                  ":WAV:DATA?")
        volts = pre.volts(codes)
        if codes.size != n or not np.isclose(pre.x_increment * self.sample_rate, 1.0):
            volts = self.onto_grid(volts, pre, n)
        return volts[:points].reshape(shots, self.samples)

    def onto_grid(self, volts: np.ndarray, pre: Preamble, n: int) -> np.ndarray:
        """A record of another length or spacing: an error, or interpolated onto the grid of
        ``n`` points from ``delay_s`` if ``resample`` (counted and logged)."""
        found = f"{volts.size} points {pre.x_increment:.6g} s apart"
        wanted = f"{n} points {1 / self.sample_rate:.6g} s apart"
        if not self.resample:
            raise InstrumentError(self.name, f"the scope returned {found}, expected {wanted}: "
                                  "choose a sample_rate the scope's time base gives, or set "
                                  "resample = true to interpolate", ":WAV:DATA?",
                                  retryable=False)
        self.resampled += 1
        if self.resampled == 1:
            log.warning("%s: the scope returned %s, expected %s; interpolating (resample = "
                        "true; counted in health()['resampled'])", self.name, found, wanted)
        grid = self.delay_s + np.arange(n) / self.sample_rate
        return np.interp(grid, pre.times(volts.size), volts)
