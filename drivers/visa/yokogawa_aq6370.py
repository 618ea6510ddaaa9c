"""Yokogawa AQ6370 optical spectrum analyser as a ``Detector`` (one sweep per shot).

Family: AQ6370C/D/E, AQ6373, AQ6374, AQ6375 (same remote commands), over LAN
(``TCPIP::host::10001::SOCKET`` after the ``open "anonymous"`` log-in is disabled, or GPIB).

Each shot is one single sweep of ``samples`` points from ``start_nm`` to ``stop_nm``. The OSA
measures the pattern currently on the drive, so it is used with a drive holding one pattern at a
time (a pulse shaper): the caller arms one shot per pattern. Levels are read in dBm and
returned as linear power in mW (``10 ** (dBm / 10)``).

Commands:

======================================  ===================================================
``*IDN?``, ``*CLS``                     identity check, clear
``:SENS:WAV:STAR x NM``, ``:STOP x NM``  sweep span (nm)
``:SENS:SWE:POIN n``                     sampling points per sweep (= ``samples``)
``:SENS:BAND:RES x NM``                  resolution bandwidth (nm)
``:SENS:SENS NORM|MID|HIGH1..3``         sensitivity
``:DISP:TRAC:Y1:SPAC LOG``               levels in dBm
``:INIT:SMOD SING``                      single sweep mode
``:FORM:DATA ASCII`` or ``REAL,32``      trace as a comma list, or a block of float32
                                         (little endian)
``:INIT``, ``*OPC?``                     sweep and wait for its end (up to ``sweep_timeout_s``)
``:TRAC:Y? TRA``                         the trace's levels (dBm)
``:SYST:ERR?``                           checked after set-up
======================================  ===================================================
"""

from __future__ import annotations

import numpy as np

from drivers.base import Detector, InstrumentError
from drivers.visa.scpi import ScpiInstrument, ScpiLink

IDN_PATTERN = r"YOKOGAWA,AQ637\d"
SENSITIVITIES = ("NHLD", "NAUT", "NORM", "MID", "HIGH1", "HIGH2", "HIGH3")


class YokogawaAQ6370(ScpiInstrument, Detector):
    idn_pattern = IDN_PATTERN
    error_query = ":SYST:ERR?"
    reported = ("start_nm", "stop_nm", "sensitivity")
    link: ScpiLink

    def __init__(self, name: str, samples: int, resource: str, library: str = "",
                 start_nm: float = 380.0, stop_nm: float = 420.0, resolution_nm: float = 0.1,
                 sensitivity: str = "MID", format: str = "ascii", timeout_s: float = 5.0,
                 sweep_timeout_s: float = 60.0) -> None:
        super().__init__(name, samples)
        if not 101 <= samples <= 50001:
            raise ValueError(f"{name}: the AQ6370 sweeps 101..50001 points, got {samples}")
        if not 0 < start_nm < stop_nm:
            raise ValueError(f"{name}: span {start_nm}..{stop_nm} nm is not increasing")
        if sensitivity.upper() not in SENSITIVITIES:
            raise ValueError(f"{name}: sensitivity must be one of {SENSITIVITIES}")
        if format not in ("ascii", "real32"):
            raise ValueError(f"{name}: format must be 'ascii' or 'real32', got {format!r}")
        self.start_nm = float(start_nm)
        self.stop_nm = float(stop_nm)
        self.resolution_nm = float(resolution_nm)
        self.sensitivity = sensitivity.upper()
        self.format = format
        self.sweep_timeout_s = float(sweep_timeout_s)
        self.link = ScpiLink(name, resource, library, timeout_s)

    def setup(self) -> list[str]:
        return ["*CLS", f":SENS:WAV:STAR {self.start_nm:.4f}NM",
                f":SENS:WAV:STOP {self.stop_nm:.4f}NM", f":SENS:SWE:POIN {self.samples}",
                f":SENS:BAND:RES {self.resolution_nm:.4f}NM",
                f":SENS:SENS {self.sensitivity}", ":DISP:TRAC:Y1:SPAC LOG",
                ":INIT:SMOD SING",
                ":FORM:DATA " + ("ASCII" if self.format == "ascii" else "REAL,32")]

    def sweep(self) -> np.ndarray:
        """One single sweep: the trace ``[samples]`` in mW."""
        self.link.write(":INIT")
        self.link.query("*OPC?", timeout_s=self.sweep_timeout_s)
        if self.format == "ascii":
            reply = self.link.query(":TRAC:Y? TRA")
            try:
                dbm = np.array([float(v) for v in reply.split(",")])
            except ValueError:
                raise InstrumentError(self.name, f"unreadable trace {reply[:40]!r}...",
                                      ":TRAC:Y? TRA", retryable=False) from None
        else:
            dbm = np.frombuffer(self.link.query_block(":TRAC:Y? TRA"), "<f4").astype(float)
        if dbm.size != self.samples:
            raise InstrumentError(self.name, f"the trace has {dbm.size} points, expected "
                                  f"{self.samples}", ":TRAC:Y? TRA", retryable=False)
        return 10.0 ** (dbm / 10.0)

    def read(self) -> np.ndarray:
        shots = self.armed(":INIT")
        return np.stack([self.sweep() for _ in range(shots)])
