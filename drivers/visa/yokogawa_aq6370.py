"""Yokogawa AQ6370 optical spectrum analyser as a ``Detector`` (one sweep per shot).

Family: AQ6370C/D/E, AQ6373, AQ6374, AQ6375 (same remote commands), over LAN
(``TCPIP::host::10001::SOCKET``, the instrument's remote port) or GPIB (``GPIB0::1::INSTR``).

Each shot is one single sweep of ``samples`` points from ``start_nm`` to ``stop_nm``. The OSA
measures the pattern currently on the drive, so it is used with a drive holding one pattern at a
time (a pulse shaper): the caller arms one shot per pattern. Levels are read in dBm from the
trace the sweep writes and returned as linear power in mW (``10 ** (dBm / 10)``).

What the instrument requires, as the drivers of people who used it do it (pymeasure
``instruments/yokogawa/aq6370series.py``, InstrumentKit ``yokogawa/yokogawa6370.py``, LabExT
``Instruments/OpticalSpectrumAnalyzerAQ6370C.py``) and the AQ6370C remote-control manual
(IM AQ6370C-17EN) says, as summarised in labd issue 17:

* **LAN log-in.** On its socket the OSA answers nothing until ``OPEN "<user>"`` (reply
  ``AUTHENTICATE CRAM-MD5.``), then the password line (reply ``ready``). The user
  ``anonymous`` takes any password; an empty one is sent as one space, as LabExT does. GPIB
  needs no log-in.
* **CR LF.** Replies on the socket end in CR LF (InstrumentKit sets ``\\r\\n``, LabExT
  ``read_termination = '\\r\\n'``); ``ScpiLink`` reads lines to LF and consumes a binary
  block's whole line end.
* **Timeouts.** An automatic offset runs about every 10 minutes and holds the instrument for
  about 30 s, so every query waits ``timeout_s`` = 30 s by default (LabExT: 30 000 ms). A sweep
  may take ``sweep_timeout_s``, by default 30 s plus three times the typical sweep time of the
  sensitivity (data sheet figures for 1001 points, scaled by ``samples``), at least 60 s:
  HIGH3 at 1001 points gets 255 s.
* **Sweep end.** ``*CLS`` clears the operation event register, ``:INIT`` starts the sweep, and
  bit 0 of ``:STAT:OPER:EVEN?`` (sweep finished) is polled every ``poll_s``, as InstrumentKit
  and LabExT do (pymeasure polls ``:STAT:OPER:COND?``). ``*OPC?`` is not used.
* **The right trace in the right unit.** The sweep must write the trace read: ``trace`` is set
  to WRITE, shown and made active (LabExT's ``_active_trace``: attribute, state, then
  ``:TRAC:ACT`` last). The level scale is logarithmic in dBm (``:DISP:TRAC:Y1:SPAC LOG``,
  ``:DISP:TRAC:Y1:UNIT DBM``), since ``:TRAC:Y?`` returns levels in the display's unit (dBm/nm
  or W otherwise).

Commands:

==========================================  ================================================
``OPEN "user"``, password                   LAN log-in (``AUTHENTICATE CRAM-MD5.``, ``ready``)
``*IDN?``, ``*CLS``                         identity check; clear status and errors
``:SENS:WAV:STAR x NM``, ``:STOP x NM``     sweep span (nm)
``:SENS:SWE:POIN n``                        sampling points per sweep (= ``samples``)
``:SENS:BAND:RES x NM``                     resolution bandwidth (nm)
``:SENS:SENS NHLD|NAUT|NORM|MID|HIGH1..3``  sensitivity
``:DISP:TRAC:Y1:SPAC LOG``, ``:UNIT DBM``   levels in dBm
``:INIT:SMOD SING``                         single sweep mode
``:TRAC:ATTR:TRx WRIT``, ``:TRAC:STAT:TRx ON``, ``:TRAC:ACT TRx``  the sweep writes trace x
``:FORM:DATA ASCII`` or ``REAL,32``         trace as a comma list, or a block of float32
``:INIT``, ``:STAT:OPER:EVEN?``             sweep; bit 0 set when it has finished
``:TRAC:Y? TRx``                            the trace's levels (dBm)
``:SYST:ERR?``                              checked after set-up
==========================================  ================================================
"""

from __future__ import annotations

import numpy as np

from drivers.base import Detector, InstrumentError
from drivers.visa.scpi import ScpiInstrument, ScpiLink

IDN_PATTERN = r"YOKOGAWA,AQ637\d"
#: Typical seconds per sweep of 1001 points (100 nm span) by sensitivity (AQ6370D data sheet,
#: approximate).
SWEEP_S = {"NHLD": 0.5, "NAUT": 0.5, "NORM": 1.0, "MID": 2.0, "HIGH1": 5.0, "HIGH2": 20.0,
           "HIGH3": 75.0}
#: An automatic offset holds the instrument for about this long (s).
AUTO_OFFSET_S = 30.0
TRACES = ("TRA", "TRB", "TRC", "TRD", "TRE", "TRF", "TRG")
SWEEP_DONE = 1  # bit 0 of the operation status event register


def default_sweep_timeout(sensitivity: str, samples: int) -> float:
    """Seconds to wait for one sweep: an automatic offset plus three typical sweeps, >= 60."""
    return max(60.0, AUTO_OFFSET_S + 3 * SWEEP_S[sensitivity] * max(samples, 1001) / 1001)


class YokogawaAQ6370(ScpiInstrument, Detector):
    idn_pattern = IDN_PATTERN
    error_query = ":SYST:ERR?"
    reported = ("start_nm", "stop_nm", "sensitivity", "trace")
    link: ScpiLink

    def __init__(self, name: str, samples: int, resource: str, library: str = "",
                 start_nm: float = 380.0, stop_nm: float = 420.0, resolution_nm: float = 0.1,
                 sensitivity: str = "MID", format: str = "ascii", trace: str = "TRA",
                 user: str = "anonymous", password: str = "", timeout_s: float = 30.0,
                 sweep_timeout_s: float | None = None, poll_s: float = 0.05) -> None:
        super().__init__(name, samples)
        if not 101 <= samples <= 50001:
            raise ValueError(f"{name}: the AQ6370 sweeps 101..50001 points, got {samples}")
        if not 0 < start_nm < stop_nm:
            raise ValueError(f"{name}: span {start_nm}..{stop_nm} nm is not increasing")
        sensitivity = sensitivity.upper()
        if sensitivity not in SWEEP_S:
            raise ValueError(f"{name}: sensitivity must be one of {tuple(SWEEP_S)}")
        if format not in ("ascii", "real32"):
            raise ValueError(f"{name}: format must be 'ascii' or 'real32', got {format!r}")
        if trace.upper() not in TRACES:
            raise ValueError(f"{name}: trace must be one of {TRACES}, got {trace!r}")
        if sweep_timeout_s is not None and sweep_timeout_s <= 0:
            raise ValueError(f"{name}: sweep_timeout_s must be positive")
        self.start_nm = float(start_nm)
        self.stop_nm = float(stop_nm)
        self.resolution_nm = float(resolution_nm)
        self.sensitivity = sensitivity
        self.format = format
        self.trace = trace.upper()
        self.user = user
        self.password = password
        self.sweep_timeout_s = float(sweep_timeout_s or
                                     default_sweep_timeout(sensitivity, samples))
        self.poll_s = float(poll_s)
        self.link = ScpiLink(name, resource, library, timeout_s)

    def connect(self) -> None:
        super().connect()
        if self.link.is_socket:
            self.log_in()

    def log_in(self) -> None:
        """The LAN log-in: ``OPEN "user"``, then the password; not retryable if refused."""
        command = f'OPEN "{self.user}"'
        reply = self.link.query(command)
        if reply != "AUTHENTICATE CRAM-MD5.":
            raise InstrumentError(self.name, f"expected 'AUTHENTICATE CRAM-MD5.', got "
                                  f"{reply!r}", command, retryable=False)
        reply = self.link.query(self.password or " ")
        if reply != "ready":
            raise InstrumentError(self.name, f"log-in refused for user {self.user!r} (reply "
                                  f"{reply!r}): check user and password", "password",
                                  retryable=False)

    def setup(self) -> list[str]:
        t = self.trace
        return ["*CLS", f":SENS:WAV:STAR {self.start_nm:.4f}NM",
                f":SENS:WAV:STOP {self.stop_nm:.4f}NM", f":SENS:SWE:POIN {self.samples}",
                f":SENS:BAND:RES {self.resolution_nm:.4f}NM", f":SENS:SENS {self.sensitivity}",
                ":DISP:TRAC:Y1:SPAC LOG", ":DISP:TRAC:Y1:UNIT DBM", ":INIT:SMOD SING",
                f":TRAC:ATTR:{t} WRIT", f":TRAC:STAT:{t} ON", f":TRAC:ACT {t}",
                ":FORM:DATA " + ("ASCII" if self.format == "ascii" else "REAL,32")]

    def sweep(self) -> np.ndarray:
        """One single sweep: the trace ``[samples]`` in mW."""
        self.link.write("*CLS")
        self.link.write(":INIT")
        self.link.wait_for(":STAT:OPER:EVEN?", lambda reply: int(reply) & SWEEP_DONE != 0,
                           self.sweep_timeout_s, self.poll_s)
        query = f":TRAC:Y? {self.trace}"
        if self.format == "ascii":
            reply = self.link.query(query)
            try:
                dbm = np.array([float(v) for v in reply.split(",")])
            except ValueError:
                raise InstrumentError(self.name, f"unreadable trace {reply[:40]!r}...", query,
                                      retryable=False) from None
        else:
            dbm = np.frombuffer(self.link.query_block(query), "<f4").astype(float)
        if dbm.size != self.samples:
            raise InstrumentError(self.name, f"the trace has {dbm.size} points, expected "
                                  f"{self.samples}", query, retryable=False)
        return 10.0 ** (dbm / 10.0)

    def read(self) -> np.ndarray:
        shots = self.armed(":INIT")
        return np.stack([self.sweep() for _ in range(shots)])
