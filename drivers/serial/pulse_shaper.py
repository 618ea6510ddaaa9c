"""A programmable pulse shaper (SLM or DMD in a 4f line) behind a serial controller, a ``Drive``.

Covers any shaper whose controller speaks the labd shaper line protocol below: a
microcontroller in front of an SLM driver board, or a small bridge program on the shaper's PC.
The shaper holds one mask at a time (``max_shots = 1``). Values are spectral amplitude
transmissions in 0..1, sent as 16-bit codes ``round(v * 65535)``; the controller maps codes to
its own bit depth and calibration.

Line protocol (ASCII lines ending ``\\n``; 115200 baud 8N1 by default):

==========================  ==================================================================
``*IDN?``                   ``<vendor>,PULSESHAPER,<serial>,<firmware>``
``CHAN?``                   the number of channels ``n``
``MASK <n> <c1>,...,<cn>``  set the mask: ``n`` decimal codes 0..65535; replies ``OK`` once the
                            modulator has settled, or ``ERR <code> <message>``
``MASK?``                   the current mask, as ``<c1>,...,<cn>``
==========================  ==================================================================

Error codes: 1 unknown command, 2 wrong number of codes, 3 code out of range, 4 hardware fault.
"""

from __future__ import annotations

import numpy as np

from drivers.base import Drive, InstrumentError
from drivers.serial.line import LineLink

IDN_PATTERN = r"^[^,]+,PULSESHAPER,"
FULL_SCALE = 65535


class SerialPulseShaper(Drive):
    idn_pattern = IDN_PATTERN
    max_shots = 1
    link: LineLink

    def __init__(self, name: str, channels: int, limits: tuple[float, float], port: str,
                 baudrate: int = 115200, timeout_s: float = 2.0) -> None:
        super().__init__(name, channels, limits)
        if self.limits[0] < 0.0 or self.limits[1] > 1.0:
            raise ValueError(f"{name}: a shaper transmits 0..1, limits {self.limits} exceed it")
        self.link = LineLink(name, port, baudrate, timeout_s)

    def configure(self) -> None:
        reply = self.link.query("CHAN?")
        if reply != str(self.channels):
            raise InstrumentError(self.name, f"the shaper has {reply} channels, configured "
                                  f"{self.channels}", "CHAN?", retryable=False)

    def _output(self, patterns: np.ndarray) -> None:
        codes = np.round(patterns[0] * FULL_SCALE).astype(np.int64)
        self.link.command(f"MASK {self.channels} " + ",".join(map(str, codes)))
