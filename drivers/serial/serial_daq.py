"""A microcontroller DAQ board (Teensy, Arduino Due...) over USB serial: a DAC ``Drive`` and an
ADC ``Detector`` sharing one board.

The board plays an uploaded waveform on its DAC and samples its ADC on the same clock, so one
batch is: ``SerialDaqADC.arm(B)``, ``SerialDaqDAC.output(patterns)`` (uploads the B shots
concatenated), ``SerialDaqADC.read()`` (plays the waveform once and returns ``B * samples`` ADC
samples, split into B rows). Both drivers name the same ``port``; they share one
``SerialDaqBoard`` (one open port) through a registry of boards by port name.

Protocol (firmware side: ``docs/serial-daq-protocol.md``; ASCII lines ending ``\\n``, binary
payloads little-endian uint16):

=============================  =================================================================
``*IDN?``                      ``<vendor>,SERIALDAQ,<serial>,<firmware>``
``INFO?``                      ``dac_bits=12 adc_bits=12 dac_lo=0 dac_hi=3.3 adc_lo=0 adc_hi=3.3
                               max_points=16384`` (volts at the board's connectors)
``RATE <hz>``                  sample rate of DAC and ADC (samples/s) -> ``OK``
``WAVE <n>`` + ``2n`` bytes    upload ``n`` DAC codes -> ``OK``
``RUN <m>``                    play the waveform once, sampling ``m`` ADC codes ->
                               ``DATA <m>`` then ``2m`` bytes
=============================  =================================================================

Errors: ``ERR <code> <message>``; 1 unknown command, 2 bad argument, 3 too many points,
4 no waveform. Volts <-> codes: ``code = round((v - lo) / (hi - lo) * (2**bits - 1))``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from drivers.base import Detector, Drive, Instrument, InstrumentError
from drivers.serial.line import LineLink

IDN_PATTERN = r"^[^,]+,SERIALDAQ,"


class SerialDaqBoard:
    """One board on one port, shared by the DAC and ADC drivers that name that port: the port
    opens for its first user and closes after its last."""

    _boards: ClassVar[dict[str, SerialDaqBoard]] = {}

    def __init__(self, port: str, baudrate: int, timeout_s: float, sample_rate: float) -> None:
        self.link = LineLink(f"serial-daq {port}", port, baudrate, timeout_s)
        self.sample_rate = float(sample_rate)
        self.users: set[Instrument] = set()
        self.info: dict[str, float] = {}
        self.idn = ""

    @classmethod
    def shared(cls, port: str, baudrate: int = 115200, timeout_s: float = 5.0,
               sample_rate: float = 48000.0) -> SerialDaqBoard:
        """The board at ``port``, made on first use; later users must agree on the rate."""
        board = cls._boards.get(port)
        if board is None:
            board = cls._boards[port] = cls(port, baudrate, timeout_s, sample_rate)
        elif board.sample_rate != float(sample_rate):
            raise ValueError(f"serial DAQ {port}: sample_rate {sample_rate:g} conflicts with "
                             f"{board.sample_rate:g} set by the board's other driver")
        return board

    def attach(self, user: Instrument) -> None:
        """Count ``user`` in; open the port and ask its identity unless it is open already."""
        self.users.add(user)
        if not self.link.is_open:
            self.info = {}
            self.link.open()
            self.idn = self.link.query("*IDN?")

    def configure(self) -> None:
        """Read the board's ranges and set the common rate, once per opening of the port."""
        if self.info:
            return
        reply = self.link.query("INFO?")
        try:
            info = {k: float(v) for k, v in (item.split("=", 1) for item in reply.split())}
        except ValueError:
            raise InstrumentError(self.link.owner, f"unreadable INFO? reply {reply!r}",
                                  "INFO?", retryable=False) from None
        self.link.command(f"RATE {self.sample_rate:.10g}")
        self.info = info

    def detach(self, user: Instrument) -> None:
        self.users.discard(user)
        if not self.users:
            self.link.close()

    def scale(self, side: str) -> tuple[float, float, int]:
        """``(lo, hi, full)`` volts and largest code of the ``"dac"`` or ``"adc"``."""
        return (self.info[f"{side}_lo"], self.info[f"{side}_hi"],
                2 ** int(self.info[f"{side}_bits"]) - 1)


class _OnBoard(Instrument):
    """The life-cycle hooks of a converter on a shared ``SerialDaqBoard``."""

    idn_pattern = IDN_PATTERN
    board: SerialDaqBoard

    @property
    def connected(self) -> bool:
        return self.board.link.is_open

    def connect(self) -> None:
        self.board.attach(self)

    def disconnect(self) -> None:
        self.board.detach(self)

    def identify(self) -> str:
        return self.board.idn

    def configure(self) -> None:
        self.board.configure()

    def health(self) -> dict[str, object]:
        return {**super().health(), "address": self.board.link.address}


class SerialDaqDAC(_OnBoard, Drive):
    def __init__(self, name: str, channels: int, limits: tuple[float, float], port: str,
                 baudrate: int = 115200, timeout_s: float = 5.0, sample_rate: float = 48000.0,
                 max_points: int = 16384) -> None:
        super().__init__(name, channels, limits)
        if channels > max_points:
            raise ValueError(f"{name}: a shot of {channels} samples exceeds {max_points} points")
        self.board = SerialDaqBoard.shared(port, baudrate, timeout_s, sample_rate)
        self.max_points = max_points
        self.max_shots = max_points // channels

    def configure(self) -> None:
        super().configure()
        lo, hi, _ = self.board.scale("dac")
        if self.limits[0] < lo or self.limits[1] > hi:
            raise InstrumentError(self.name, f"limits {self.limits} exceed the board's DAC "
                                  f"range [{lo:g}, {hi:g}] V", "INFO?", retryable=False)
        if self.max_points > self.board.info["max_points"]:
            raise InstrumentError(self.name, f"max_points {self.max_points} exceeds the "
                                  f"board's {self.board.info['max_points']:g}", "INFO?",
                                  retryable=False)

    def _output(self, patterns: np.ndarray) -> None:
        lo, hi, full = self.board.scale("dac")
        codes = np.round((patterns.reshape(-1) - lo) / (hi - lo) * full).astype("<u2")
        self.board.link.command(f"WAVE {codes.size}", codes.tobytes())


class SerialDaqADC(_OnBoard, Detector):
    def __init__(self, name: str, samples: int, port: str, baudrate: int = 115200,
                 timeout_s: float = 5.0, sample_rate: float = 48000.0) -> None:
        super().__init__(name, samples)
        self.board = SerialDaqBoard.shared(port, baudrate, timeout_s, sample_rate)

    def read(self) -> np.ndarray:
        shots = self.armed("RUN")
        points = shots * self.samples
        command = f"RUN {points}"
        link = self.board.link
        reply = link.query(command)
        if reply != f"DATA {points}":
            raise InstrumentError(self.name, f"expected 'DATA {points}', got {reply!r}",
                                  command, retryable=False)
        codes = np.frombuffer(link.exact(command, 2 * points), "<u2")
        lo, hi, full = self.board.scale("adc")
        return (lo + codes * ((hi - lo) / full)).reshape(shots, self.samples)
