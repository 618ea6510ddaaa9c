"""Keysight (Agilent) 33500B / 33600A arbitrary waveform generator as a ``Drive``.

Family: 33509B, 33510B, 33511B, 33519B, 33520B, 33521B, 33522B and the 33600A series (same
SCPI), over LAN (``TCPIP::host::5025::SOCKET`` or ``TCPIP::host::INSTR``) or USB.

A batch of B shots is one arbitrary waveform of ``B * channels`` DAC samples (the shots
concatenated), played once per batch as a triggered burst of one cycle at ``sample_rate``
samples/s. The instrument's Sync output marks the start of the waveform: wire it to the
detector's trigger input. ``max_shots`` is ``max_points // channels``.

Scaling (volts): the output span is fixed by ``limits = (lo, hi)``: amplitude ``hi - lo`` Vpp
and offset ``(hi + lo) / 2``, so DAC code +32767 is ``hi`` and -32767 is ``lo``; the
instrument's own voltage limits are set to the same span (``VOLT:LIM``), a second guard behind
``Drive.output``. The span must fit the output for the ``load``: +-10 V into high impedance
(``"INF"``), +-5 V into 50 ohm.

Commands (``{s}`` is the source channel):

===========================================  ===============================================
``*IDN?``                                    identity check on open
``*CLS``, ``FORM:BORD SWAP``                 clear errors; little-endian binary blocks
``OUTP{s}:LOAD INF|50``                      load the amplitude refers to
``SOUR{s}:VOLT:LIM:HIGH|LOW v``, ``:STAT ON``  the instrument's own output limits (V)
``SOUR{s}:VOLT vpp``, ``SOUR{s}:VOLT:OFFS v``  amplitude (Vpp) and offset (V)
``SOUR{s}:BURS:MODE TRIG``, ``:NCYC 1``, ``:STAT ON``, ``TRIG{s}:SOUR BUS``
                                             one waveform per software trigger
``SOUR{s}:DATA:VOL:CLE``                     free the volatile arbitrary memory
``SOUR{s}:DATA:ARB:DAC labd,#<block>``       upload int16 DAC codes
``SOUR{s}:FUNC ARB``, ``SOUR{s}:FUNC:ARB labd``  play that waveform
``SOUR{s}:FUNC:ARB:SRAT hz``                 sample rate (samples/s)
``OUTP{s} ON``, ``*TRG``                     output on; play one batch
``SYST:ERR?``                                checked after set-up and after each upload
===========================================  ===============================================
"""

from __future__ import annotations

import numpy as np

from drivers.base import Drive
from drivers.visa.scpi import ScpiInstrument, ScpiLink

IDN_PATTERN = r"(Agilent|Keysight) Technologies,33[56]\d\d[AB]"
#: Largest output voltage magnitude (V) by load.
MAX_VOLTS = {"INF": 10.0, "50": 5.0}
ARB_NAME = "labd"
FULL_SCALE = 32767


class Keysight33500B(ScpiInstrument, Drive):
    idn_pattern = IDN_PATTERN
    reported = ("sample_rate", "limits")
    link: ScpiLink

    def __init__(self, name: str, channels: int, limits: tuple[float, float], resource: str,
                 library: str = "", sample_rate: float = 1e6, source: int = 1,
                 load: str = "INF", max_points: int = 1_000_000, timeout_s: float = 5.0) -> None:
        super().__init__(name, channels, limits)
        load = str(load).upper()
        if load not in MAX_VOLTS:
            raise ValueError(f"{name}: load must be 'INF' or '50', got {load!r}")
        lo, hi = self.limits
        if max(abs(lo), abs(hi)) > MAX_VOLTS[load]:
            raise ValueError(f"{name}: limits {self.limits} exceed the output's "
                             f"+-{MAX_VOLTS[load]:g} V into load {load}")
        if not 1.0 <= sample_rate <= 250e6:
            raise ValueError(f"{name}: sample_rate {sample_rate:g} outside 1 S/s..250 MS/s")
        if source not in (1, 2):
            raise ValueError(f"{name}: source must be 1 or 2, got {source}")
        if channels < 8 or channels > max_points:
            raise ValueError(f"{name}: a shot of {channels} samples does not fit the "
                             f"8..{max_points} points of arbitrary memory")
        self.sample_rate = float(sample_rate)
        self.source = source
        self.load = load
        self.max_shots = max_points // channels
        self.amplitude = hi - lo
        self.offset = (hi + lo) / 2
        self.link = ScpiLink(name, resource, library, timeout_s)

    def setup(self) -> list[str]:
        s = self.source
        lo, hi = self.limits
        return ["*CLS", "FORM:BORD SWAP", f"OUTP{s}:LOAD {self.load}",
                f"SOUR{s}:VOLT:LIM:STAT OFF",
                f"SOUR{s}:VOLT:OFFS {self.offset:.6g}", f"SOUR{s}:VOLT {self.amplitude:.6g}",
                f"SOUR{s}:VOLT:LIM:HIGH {hi:.6g}", f"SOUR{s}:VOLT:LIM:LOW {lo:.6g}",
                f"SOUR{s}:VOLT:LIM:STAT ON",
                f"SOUR{s}:BURS:MODE TRIG", f"SOUR{s}:BURS:NCYC 1",
                f"TRIG{s}:SOUR BUS", f"SOUR{s}:BURS:STAT ON", f"OUTP{s} ON"]

    def codes(self, patterns: np.ndarray) -> np.ndarray:
        """The int16 DAC codes of ``patterns`` (volts), shots concatenated."""
        scaled = (patterns.reshape(-1) - self.offset) * (2 * FULL_SCALE / self.amplitude)
        return np.clip(np.round(scaled), -FULL_SCALE, FULL_SCALE).astype("<i2")

    def _output(self, patterns: np.ndarray) -> None:
        s = self.source
        upload = f"SOUR{s}:DATA:ARB:DAC {ARB_NAME},"
        self.link.write(f"SOUR{s}:DATA:VOL:CLE")
        self.link.write_block(upload, self.codes(patterns).tobytes())
        self.check_errors(upload)
        for command in (f"SOUR{s}:FUNC ARB", f"SOUR{s}:FUNC:ARB {ARB_NAME}",
                        f"SOUR{s}:FUNC:ARB:SRAT {self.sample_rate:.10g}"):
            self.link.write(command)
        self.check_errors(f"SOUR{s}:FUNC:ARB {ARB_NAME}")
        self.link.write("*TRG")
