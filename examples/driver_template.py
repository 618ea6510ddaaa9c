"""A template for a lab's own labd drivers: a Drive and a Detector for SCPI instruments.

Copy this file into your package, rename the classes, and replace the commands with your
instruments' (the guide is docs/writing-a-driver.md). The two instruments here are imaginary
but ordinary: an arbitrary waveform source that plays float32 volts uploaded as one binary
block, and a digitiser triggered by it that returns float32 volts. The base classes do the
rest: ``open()`` connects, checks ``*IDN?`` against ``idn_pattern``, sends ``setup()``, drains
the error queue and marks the instrument open (closing it again if any step fails); ``close()``
never raises; ``health()`` reports ``idn``, the address and ``reported``. A test runs this file
against the expected-dialogue fake link (tests/drivers/test_driver_template.py).

A configuration names these classes by class path (``driver = "driver_template:TemplateSource"``,
this folder as its ``[plugins] path``) or, packaged, by entry point (the guide's last section).
"""

from __future__ import annotations

import numpy as np

from drivers.base import Detector, Drive, InstrumentError
from drivers.visa.scpi import ScpiInstrument, ScpiLink


class TemplateSource(ScpiInstrument, Drive):
    """ACME WS-1 waveform source: one shot is ``channels`` samples at ``sample_rate``; a batch
    is played once, shots back to back, on ``*TRG``; its marker output triggers the digitiser.

    Commands: ``*IDN?``; ``*CLS``; ``VOLT:LOW v``, ``VOLT:HIGH v`` (output clamp, V);
    ``RATE hz``; ``WAVE #<block of float32 volts>``; ``OUTP ON``; ``*TRG``; ``SYST:ERR?``.
    """

    idn_pattern = r"^ACME,WS-1,"
    reported = ("sample_rate",)
    link: ScpiLink

    def __init__(self, name: str, channels: int, limits: tuple[float, float], resource: str,
                 library: str = "", sample_rate: float = 1e6, timeout_s: float = 5.0) -> None:
        super().__init__(name, channels, limits)
        if not 1.0 <= sample_rate <= 100e6:  # the instrument's range, from its manual
            raise ValueError(f"{name}: sample_rate {sample_rate:g} outside 1 S/s..100 MS/s")
        self.sample_rate = float(sample_rate)
        self.link = ScpiLink(name, resource, library, timeout_s)

    def setup(self) -> list[str]:
        lo, hi = self.limits
        return ["*CLS", f"VOLT:LOW {lo:g}", f"VOLT:HIGH {hi:g}", f"RATE {self.sample_rate:g}",
                "OUTP ON"]

    def _output(self, patterns: np.ndarray) -> None:
        self.link.write_block("WAVE ", patterns.astype("<f4").tobytes())
        self.check_errors("WAVE")  # a refused upload must not be played
        self.link.write("*TRG")


class TemplateDigitiser(ScpiInstrument, Detector):
    """ACME DG-2 digitiser: records ``shots * samples`` points at ``sample_rate`` after its
    external trigger.

    Commands: ``*IDN?``; ``*CLS``; ``RATE hz``; ``TRIG:SOUR EXT``; ``ACQ:POIN n``; ``ARM``;
    ``ACQ:DONE?`` (1 when the record is taken); ``DATA?`` (a block of float32 volts).
    """

    idn_pattern = r"^ACME,DG-2,"
    reported = ("sample_rate",)
    link: ScpiLink

    def __init__(self, name: str, samples: int, resource: str, library: str = "",
                 sample_rate: float = 1e6, timeout_s: float = 5.0,
                 acquire_timeout_s: float = 10.0) -> None:
        super().__init__(name, samples)
        self.sample_rate = float(sample_rate)
        self.acquire_timeout_s = float(acquire_timeout_s)
        self.link = ScpiLink(name, resource, library, timeout_s)

    def setup(self) -> list[str]:
        return ["*CLS", f"RATE {self.sample_rate:g}", "TRIG:SOUR EXT"]

    def arm(self, shots: int) -> None:
        self.link.write(f"ACQ:POIN {shots * self.samples}")
        self.link.write("ARM")
        super().arm(shots)

    def read(self) -> np.ndarray:
        shots = self.armed("DATA?")
        self.link.wait_for("ACQ:DONE?", lambda reply: reply == "1", self.acquire_timeout_s)
        volts = np.frombuffer(self.link.query_block("DATA?"), "<f4")
        if volts.size != shots * self.samples:
            raise InstrumentError(self.name, f"the record holds {volts.size} points, expected "
                                  f"{shots * self.samples}", "DATA?", retryable=False)
        return volts.reshape(shots, self.samples).astype(np.float64)
