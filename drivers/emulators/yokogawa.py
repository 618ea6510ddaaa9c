"""An emulated Yokogawa AQ6370-family OSA on its LAN port, sweeping a rig's spectrum.

As strict as the instrument where labd's drivers have been wrong (issue 17):

* **Log-in.** Each connection answers nothing until ``OPEN "<user>"`` (reply
  ``AUTHENTICATE CRAM-MD5.``) and the password line (``ready``, or ``error`` and back to the
  start). ``anonymous`` takes any password; ``users`` adds named users with their passwords.
* **CR LF.** Every reply, a binary block's included, ends in CR LF.
* **Sweeps take time.** ``:INIT`` starts a sweep that lasts the sensitivity's typical time for
  the points (``SWEEP_S`` per 1001 points, times ``time_scale``, at least ``min_sweep_s``).
  Meanwhile the traces hold what they held, ``:STAT:OPER:COND?`` bit 0 is clear, and ``*OPC?``
  answers 1 at once (it does not wait for the sweep). At its end the sweep writes every trace
  whose attribute is WRITE and sets bit 0 of the operation event register (``:STAT:OPER:EVEN?``
  returns the register and clears it; ``*CLS`` clears it too). In repeat mode
  (``:INIT:SMOD REP``, the power-on mode) a new sweep starts at once.
* **Traces and units.** Traces TRA..TRG; as left by an earlier user, TRA is fixed (FIX) and
  holds an old 1001-point trace at -60 dBm, TRB is the written, active trace, and the level
  unit is dBm/nm. ``:TRAC:Y? TRx`` returns trace x in the display's unit: dBm, dBm/nm (dBm
  minus 10 log10 of the resolution in nm), W or W/nm (``:DISP:TRAC:Y1:SPAC LOG|LIN`` and
  ``:DISP:TRAC:Y1:UNIT DBM|W|DBM/NM|W/NM``; a linear scale turns dBm units into watts and a
  logarithmic one watts into dBm).

The spectrum is the rig's ``sweep()`` (the pulse shaper's mask through the bench), resampled
onto the sweep points, in mW, with a noise floor of -90 dBm.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from drivers.emulators.rig import EmulatedRig
from drivers.emulators.scpi import Response, ScpiModel
from drivers.visa.scpi import format_block

#: Typical seconds per sweep of 1001 points by sensitivity (approximate, as the data sheet).
SWEEP_S = {"NHLD": 0.5, "NAUT": 0.5, "NORM": 1.0, "MID": 2.0, "HIGH1": 5.0, "HIGH2": 20.0,
           "HIGH3": 75.0}
TRACES = ("TRA", "TRB", "TRC", "TRD", "TRE", "TRF", "TRG")
SWEEP_DONE = 1


class OsaModel(ScpiModel):
    idn = "YOKOGAWA,AQ6374,EMU0001,01.01"
    end = b"\r\n"
    settings: ClassVar[dict[str, str]] = {
                "SENS:WAV:STAR": "350NM", "SENS:WAV:STOP": "1200NM", "SENS:SWE:POIN": "1001",
                "SENS:BAND:RES": "0.1NM", "SENS:SENS": "MID", "DISP:TRAC:Y:SPAC": "LOG",
                "DISP:TRAC:Y:UNIT": "DBM/NM", "INIT:SMOD": "REP", "FORM:DATA": "ASCII",
                "TRAC:ACT": "TRB"}
    floor_dbm = -90.0

    def __init__(self, rig: EmulatedRig, time_scale: float = 0.05, min_sweep_s: float = 0.02,
                 users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.rig = rig
        self.time_scale = time_scale
        self.min_sweep_s = min_sweep_s
        self.users = dict(users or {})
        self.attributes = {t: "WRIT" for t in TRACES} | {"TRA": "FIX"}
        self.traces: dict[str, np.ndarray] = {"TRA": np.full(1001, 1e-6)}  # mW: -60 dBm
        self.event = 0
        self.sweep_end: float | None = None
        self.spectrum: np.ndarray | None = None
        self.handlers.update({
            "INIT": lambda a, b: self._start(), "*CLS": lambda a, b: self._clear(),
            "STAT:OPER:EVEN?": lambda a, b: self._event(),
            "STAT:OPER:COND?": lambda a, b: "0" if self._sweeping() else "1",
            "TRAC:Y?": self._trace, "TRAC:DATA:Y?": self._trace})
        for t in TRACES:
            self.handlers[f"TRAC:ATTR:{t}"] = self._attribute(t)
            self.handlers[f"TRAC:ATTR:{t}?"] = lambda a, b, t=t: self.attributes[t]
            self.values[f"TRAC:STAT:{t}"] = "1" if t == "TRB" else "0"

    # -- the log-in, per connection ---------------------------------------------------------
    def session(self) -> dict[str, object]:
        return {"state": "user", "user": ""}

    def receive(self, text: str, block: bytes | None, session: dict[str, object]) -> Response:
        if session["state"] == "in":
            return self.handle(text, block)
        if session["state"] == "user":
            m = re.fullmatch(r'\s*OPEN\s+"([^"]*)"\s*', text, re.IGNORECASE)
            if m is None:
                return None  # nothing is answered before the log-in
            session.update(state="password", user=m.group(1))
            return "AUTHENTICATE CRAM-MD5."
        user, password = str(session["user"]), text.strip()
        if user == "anonymous" or self.users.get(user) == password:
            session["state"] = "in"
            return "ready"
        session["state"] = "user"
        return "error"

    # -- sweeps ------------------------------------------------------------------------------
    def _sweeping(self) -> bool:
        """Whether a sweep runs now; a sweep whose time is up writes its traces first."""
        if self.sweep_end is None:
            return False
        if time.monotonic() < self.sweep_end:
            return True
        assert self.spectrum is not None
        for t, attribute in self.attributes.items():
            if attribute == "WRIT":
                self.traces[t] = self.spectrum
        self.event |= SWEEP_DONE
        self.sweep_end = None
        if self.values["INIT:SMOD"].upper().startswith("REP"):
            self._start()
        return self.sweep_end is not None

    def _start(self) -> None:
        points = int(self.values["SENS:SWE:POIN"])
        spectrum = self.rig.sweep()
        self.spectrum = np.interp(np.linspace(0, 1, points),
                                  np.linspace(0, 1, spectrum.size), spectrum)
        seconds = SWEEP_S.get(self.values["SENS:SENS"].upper(), 2.0) * points / 1001
        self.sweep_end = time.monotonic() + max(seconds * self.time_scale, self.min_sweep_s)

    def _clear(self) -> None:
        self.errors.clear()
        self.event = 0

    def _event(self) -> str:
        self._sweeping()
        value, self.event = self.event, 0
        return str(value)

    # -- traces ------------------------------------------------------------------------------
    def _attribute(self, trace: str) -> Callable[[str, bytes | None], None]:
        def set_attribute(args: str, block: bytes | None) -> None:
            value = args.strip().upper()[:4]
            if value not in ("WRIT", "FIX", "MAX", "MIN", "RAVG", "CALC"):
                self.error(-224, "Illegal parameter value; trace attribute")
                return
            self.attributes[trace] = value

        return set_attribute

    def _unit(self) -> str:
        unit = self.values["DISP:TRAC:Y:UNIT"].upper()
        linear = self.values["DISP:TRAC:Y:SPAC"].upper().startswith("LIN")
        per_nm = unit.endswith("/NM")
        return ("W" if linear else "DBM") + ("/NM" if per_nm else "")

    def _levels(self, mw: np.ndarray) -> np.ndarray:
        unit = self._unit()
        resolution = float(re.sub(r"[^0-9.eE+-]", "", self.values["SENS:BAND:RES"]))
        density = mw / resolution if unit.endswith("/NM") else mw
        if unit.startswith("W"):
            return density / 1000.0
        return 10 * np.log10(np.maximum(density, 10 ** (self.floor_dbm / 10)))

    def _trace(self, args: str, block: bytes | None) -> Response:
        self._sweeping()
        name = args.strip().upper()
        if name not in self.traces:
            self.error(-221, f"Settings conflict; no data in trace {name}")
            return "0"
        levels = self._levels(self.traces[name])
        if self.values["FORM:DATA"].upper().startswith("REAL"):
            return format_block(levels.astype("<f4").tobytes())
        return ",".join(f"{v:+.6E}" for v in levels)
