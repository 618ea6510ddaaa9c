"""Keysight (Agilent) 33500B / 33600A arbitrary waveform generator as a ``Drive``.

Family: 33509B, 33510B, 33511B, 33512B, 33519B, 33520B, 33521B, 33522B and the 33600A series
(33611A, 33612A, 33621A, 33622A), same SCPI, over LAN (``TCPIP::host::5025::SOCKET`` or
``TCPIP::host::INSTR``) or USB. Model numbers ending in an even digit have two channels.

A batch of B shots is one arbitrary waveform of ``B * channels`` DAC samples (the shots
concatenated), played once per batch as a triggered burst of one cycle at ``sample_rate``
samples/s. The instrument's Sync output marks the start of the burst: wire it to the detector's
trigger input. The driver makes Sync follow the channel it plays (``OUTP:SYNC:SOUR CH<s>`` on
two-channel models, where Sync may otherwise follow the other channel), normal mode and
polarity, and switches it on: it does not rely on what the front panel left. ``max_shots`` is
``max_points // channels``.

Scaling (volts): the output span is fixed by ``limits = (lo, hi)``: amplitude ``hi - lo`` Vpp
and offset ``(hi + lo) / 2``, so DAC code +32767 is ``hi`` and -32767 is ``lo``; the
instrument's own voltage limits are set to the same span (``VOLT:LIM``), a second guard behind
``Drive.output``. The span must fit the output for the ``load``: +-10 V into high impedance
(``"INF"``), +-5 V into 50 ohm.

Arb filter (``arb_filter``): ``OFF`` by default, so each sample is held until the next (the
sample-and-hold the encoding describes); ``NORMAL`` (the instrument's default: flattest
frequency response, ringing on steps) and ``STEP`` (no overshoot, rounded steps) smear held
samples into their neighbours. Sample rate: from 1 uSa/s to the model's maximum (pymeasure's
``arb_srate``: 1 uSa/s to 250 MSa/s on the 33500B, "can be lower depending on your device";
the 33600A goes to 1 GSa/s). The constructor checks the family's 1 uSa/s..1 GSa/s; at open the
driver asks the instrument its own bounds (``FUNC:ARB:SRAT? MIN`` and ``MAX``, after the filter
is set) and refuses a rate outside them, naming them.
Sources: pymeasure ``instruments/agilent/agilent33500.py`` (``arb_filter``, ``arb_srate``),
QCoDeS ``Keysight/KeysightAgilent_33XXX.py`` (``OUTPut:SYNC``, ``OUTPut:SYNC:SOURce`` on
two-channel models only), labd issue 17.

Commands (``{s}`` is the source channel):

===========================================  ===============================================
``*IDN?``                                    identity check on open
``*CLS``, ``FORM:BORD SWAP``                 clear errors; little-endian binary blocks
``OUTP{s}:LOAD INF|50``                      load the amplitude refers to
``SOUR{s}:VOLT:LIM:HIGH|LOW v``, ``:STAT ON``  the instrument's own output limits (V)
``SOUR{s}:VOLT vpp``, ``SOUR{s}:VOLT:OFFS v``  amplitude (Vpp) and offset (V)
``SOUR{s}:BURS:MODE TRIG``, ``:NCYC 1``, ``:STAT ON``, ``TRIG{s}:SOUR BUS``
                                             one waveform per software trigger
``SOUR{s}:FUNC:ARB:FILT OFF|STEP|NORM``      arb filter
``OUTP:SYNC:SOUR CH{s}`` (two channels), ``OUTP:SYNC:MODE NORM``, ``OUTP:SYNC:POL NORM``,
``OUTP:SYNC ON``                             Sync marks the start of this channel's burst
``SOUR{s}:FUNC:ARB:SRAT? MIN|MAX``           the instrument's sample-rate bounds
``SOUR{s}:DATA:VOL:CLE``                     free the volatile arbitrary memory
``SOUR{s}:DATA:ARB:DAC labd,#<block>``       upload int16 DAC codes
``SOUR{s}:FUNC ARB``, ``SOUR{s}:FUNC:ARB labd``  play that waveform
``SOUR{s}:FUNC:ARB:SRAT hz``                 sample rate (samples/s)
``OUTP{s} ON``, ``*TRG``                     output on; play one batch
``SYST:ERR?``                                checked after set-up and after each upload
===========================================  ===============================================
"""

from __future__ import annotations

import re

import numpy as np

from drivers.base import Drive, InstrumentError
from drivers.visa.scpi import ScpiInstrument, ScpiLink

IDN_PATTERN = r"(Agilent|Keysight) Technologies,33[56]\d\d[AB]"
#: Largest output voltage magnitude (V) by load.
MAX_VOLTS = {"INF": 10.0, "50": 5.0}
#: Sample-rate bounds of the family (Sa/s); each model's come from the instrument at open.
RATE_BOUNDS = (1e-6, 1e9)
FILTERS = {"OFF": "OFF", "STEP": "STEP", "NORMAL": "NORM"}
ARB_NAME = "labd"
FULL_SCALE = 32767


def two_channels(idn: str) -> bool:
    """Whether the model in ``*IDN?`` has two channels (its number ends in an even digit)."""
    m = re.search(r"33[56]\d(\d)[AB]", idn)
    return m is not None and int(m.group(1)) % 2 == 0


class Keysight33500B(ScpiInstrument, Drive):
    idn_pattern = IDN_PATTERN
    reported = ("sample_rate", "limits", "source", "arb_filter")
    link: ScpiLink

    def __init__(self, name: str, channels: int, limits: tuple[float, float], resource: str,
                 library: str = "", sample_rate: float = 1e6, source: int = 1,
                 load: str = "INF", arb_filter: str = "OFF", max_points: int = 1_000_000,
                 timeout_s: float = 5.0) -> None:
        super().__init__(name, channels, limits)
        load = str(load).upper()
        if load not in MAX_VOLTS:
            raise ValueError(f"{name}: load must be 'INF' or '50', got {load!r}")
        lo, hi = self.limits
        if max(abs(lo), abs(hi)) > MAX_VOLTS[load]:
            raise ValueError(f"{name}: limits {self.limits} exceed the output's "
                             f"+-{MAX_VOLTS[load]:g} V into load {load}")
        if not RATE_BOUNDS[0] <= sample_rate <= RATE_BOUNDS[1]:
            raise ValueError(f"{name}: sample_rate {sample_rate:g} outside the family's "
                             "1 uSa/s..1 GSa/s")
        if source not in (1, 2):
            raise ValueError(f"{name}: source must be 1 or 2, got {source}")
        if str(arb_filter).upper() not in FILTERS:
            raise ValueError(f"{name}: arb_filter must be one of {sorted(FILTERS)}, got "
                             f"{arb_filter!r}")
        if channels < 8 or channels > max_points:
            raise ValueError(f"{name}: a shot of {channels} samples does not fit the "
                             f"8..{max_points} points of arbitrary memory")
        self.sample_rate = float(sample_rate)
        self.source = source
        self.load = load
        self.arb_filter = str(arb_filter).upper()
        self.max_shots = max_points // channels
        self.amplitude = hi - lo
        self.offset = (hi + lo) / 2
        self.link = ScpiLink(name, resource, library, timeout_s)

    def setup(self) -> list[str]:
        s = self.source
        lo, hi = self.limits
        if s == 2 and not two_channels(self.idn):
            raise InstrumentError(self.name, f"source 2 configured, but {self.idn!r} has one "
                                  "channel", "*IDN?", retryable=False)
        sync = [f"OUTP:SYNC:SOUR CH{s}"] if two_channels(self.idn) else []
        return ["*CLS", "FORM:BORD SWAP", f"OUTP{s}:LOAD {self.load}",
                f"SOUR{s}:VOLT:LIM:STAT OFF",
                f"SOUR{s}:VOLT:OFFS {self.offset:.6g}", f"SOUR{s}:VOLT {self.amplitude:.6g}",
                f"SOUR{s}:VOLT:LIM:HIGH {hi:.6g}", f"SOUR{s}:VOLT:LIM:LOW {lo:.6g}",
                f"SOUR{s}:VOLT:LIM:STAT ON",
                f"SOUR{s}:BURS:MODE TRIG", f"SOUR{s}:BURS:NCYC 1",
                f"TRIG{s}:SOUR BUS", f"SOUR{s}:BURS:STAT ON",
                f"SOUR{s}:FUNC:ARB:FILT {FILTERS[self.arb_filter]}",
                *sync, "OUTP:SYNC:MODE NORM", "OUTP:SYNC:POL NORM", "OUTP:SYNC ON",
                f"OUTP{s} ON"]

    def configure(self) -> None:
        super().configure()
        query = f"SOUR{self.source}:FUNC:ARB:SRAT?"
        try:
            low, high = (float(self.link.query(f"{query} {b}")) for b in ("MIN", "MAX"))
        except ValueError:
            raise InstrumentError(self.name, "unreadable sample-rate bounds", query,
                                  retryable=False) from None
        if not low <= self.sample_rate <= high:
            raise InstrumentError(self.name, f"sample_rate {self.sample_rate:g} Sa/s is outside "
                                  f"this instrument's {low:g}..{high:g} Sa/s", query,
                                  retryable=False)

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
