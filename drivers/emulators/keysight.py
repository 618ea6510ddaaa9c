"""An emulated Keysight 33522B AWG and InfiniiVision scope, wired to a rig as on the bench: the
AWG's output drives the rig, its Sync output the scope's EXT TRIG input, the rig's response the
scope's channel.

Strict where the instruments are (issue 17: an emulator easier than the instrument hides bugs):

* ``AwgModel`` (33522B, two channels): DAC-code uploads, amplitude, offset, voltage limits, a
  triggered burst per channel. ``*TRG`` plays every channel armed for a bus trigger. Sync
  (``OUTP:SYNC``, on by default, following channel 1 until ``OUTP:SYNC:SOUR CH2``, normal mode
  and polarity) fires only for the channel it follows: a burst on channel 2 with Sync on channel
  1 never triggers the scope. The arb filter (``FUNC:ARB:FILT``, ``NORM`` by default as on the
  instrument) smears held samples into their neighbours (NORMAL: weights 0.2/0.6/0.2, STEP:
  0.1/0.8/0.1, a crude stand-in for their step responses; OFF holds each sample). The sample
  rate (``FUNC:ARB:SRAT``, ``? MIN|MAX``) is bounded by 1 uSa/s..250 MSa/s.
* ``ScopeModel`` (DSOX3024T): a single acquisition records, on a trigger at EXT, the time base's
  ``TIM:RANG * sample_rate`` points of the rig's response (padded with its last value after the
  burst). ``:WAV:POIN`` below 100 is error -222 and leaves the count; ``:WAV:POIN?`` tells the
  points ``:WAV:DATA?`` will transfer (at most the record's, decimated when fewer are asked);
  the preamble matches. Signed WORD or BYTE codes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from drivers.emulators.rig import EmulatedRig
from drivers.emulators.scpi import ScpiModel
from drivers.visa.scpi import format_block

#: Settings the 33522B shares between its channels.
SHARED = ("FORM:BORD", "OUTP:SYNC", "OUTP:SYNC:SOUR", "OUTP:SYNC:MODE", "OUTP:SYNC:POL")
#: Neighbour weights by which each arb filter smears a held sample (centre weight in the middle).
FILTER_TAPS = {"NORM": (0.2, 0.6, 0.2), "STEP": (0.1, 0.8, 0.1), "OFF": (0.0, 1.0, 0.0)}
RATE_BOUNDS = (1e-6, 250e6)


class ScopeModel(ScpiModel):
    idn = "KEYSIGHT TECHNOLOGIES,DSOX3024T,EMU00001,07.50"
    #: Initial values of the settings the driver makes (by subsystem).
    settings: ClassVar[dict[str, str]] = {
        "CHAN:DISP": "1", "CHAN:RANG": "8", "CHAN:OFFS": "0",
        "TRIG:MODE": "EDGE", "TRIG:EDGE:SOUR": "CHAN1", "TRIG:EDGE:SLOP": "POS",
        "TRIG:EDGE:LEV": "0", "TRIG:SWE": "AUTO",
        "TIM:REF": "CENT", "TIM:POS": "0", "TIM:RANG": "1e-3", "ACQ:TYPE": "NORM",
        "WAV:SOUR": "CHAN1", "WAV:FORM": "BYTE", "WAV:BYT": "MSBF", "WAV:UNS": "1",
        "WAV:POIN:MODE": "NORM", "WAV:POIN": "1000"}

    def __init__(self, sample_rate: float = 1e6) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.armed = False
        self.record: np.ndarray | None = None
        self.handlers.update({
            "STOP": lambda a, b: self._stop(), "SING": lambda a, b: self._single(),
            "AER?": lambda a, b: "1" if self.armed else "0",
            "OPER:COND?": lambda a, b: "+8" if self.armed else "+0",
            "WAV:POIN": lambda a, b: self._points(a),
            "WAV:POIN?": lambda a, b: f"+{self._given()}",
            "WAV:PRE?": lambda a, b: self._preamble(), "WAV:DATA?": lambda a, b: self._data()})

    def _stop(self) -> None:
        self.armed = False

    def _single(self) -> None:
        self.armed, self.record = True, None

    def trigger(self, volts: np.ndarray) -> None:
        """An edge at EXT TRIG while the rig answers ``volts``: record them if armed for it."""
        if self.armed and self.values["TRIG:EDGE:SOUR"].upper().startswith("EXT"):
            n = max(round(self.number("TIM:RANG") * self.sample_rate), 2)
            volts = np.asarray(volts, dtype=np.float64)[:n]
            self.armed = False
            self.record = np.concatenate([volts, np.full(n - volts.size, volts[-1])])

    def _points(self, args: str) -> None:
        n = int(float(args))
        if n < 100:
            self.error(-222, "Data out of range")
            return
        self.values["WAV:POIN"] = str(n)

    def _given(self) -> int:
        """Points the next ``:WAV:DATA?`` transfers."""
        asked = int(self.values["WAV:POIN"])
        return asked if self.record is None else min(asked, self.record.size)

    def _transferred(self) -> np.ndarray:
        n = self._given()
        assert self.record is not None
        return self.record[np.arange(n) * self.record.size // n]

    def _scale(self) -> tuple[str, float, float, int]:
        word = self.values["WAV:FORM"].upper().startswith("WORD")
        bits = 16 if word else 8
        return ("<i2" if word else "i1"), self.number("CHAN:RANG") / 2 ** bits, \
            self.number("CHAN:OFFS"), 2 ** (bits - 1) - 1

    def _preamble(self) -> str:
        dtype, yinc, yorig, _ = self._scale()
        n = 0 if self.record is None else self._given()
        xinc = self.number("TIM:RANG") / max(n, 1)
        fmt = 1 if dtype == "<i2" else 0
        return (f"+{fmt},+0,+{n},+1,{xinc:+.9E},{self.number('TIM:POS'):+.9E},+0,"
                f"{yinc:+.9E},{yorig:+.9E},+0")

    def _data(self) -> bytes:
        if self.record is None:
            self.error(-222, "Data out of range; no acquisition")
            return format_block(b"")
        dtype, yinc, yorig, top = self._scale()
        codes = np.clip(np.round((self._transferred() - yorig) / yinc), -top, top)
        return format_block(codes.astype(dtype).tobytes())


class AwgModel(ScpiModel):
    idn = "Keysight Technologies,33522B,MY5EMU0001,4.00-1.19-2.00-58-00"
    settings: ClassVar[dict[str, str]] = {
                "OUTP:LOAD": "50", "OUTP": "0", "VOLT": "0.1", "VOLT:OFFS": "0",
                "VOLT:LIM:HIGH": "5", "VOLT:LIM:LOW": "-5", "VOLT:LIM:STAT": "0",
                "BURS:MODE": "TRIG", "BURS:NCYC": "1", "BURS:STAT": "0", "TRIG:SOUR": "IMM",
                "FUNC": "SIN", "FUNC:ARB": "", "FUNC:ARB:SRAT": "40000", "FUNC:ARB:FILT": "NORM"}
    shared_settings: ClassVar[dict[str, str]] = {
                "FORM:BORD": "NORM", "OUTP:SYNC": "1", "OUTP:SYNC:SOUR": "CH1",
                "OUTP:SYNC:MODE": "NORM", "OUTP:SYNC:POL": "NORM"}
    max_points = 1_000_000

    def __init__(self, on_trigger: Callable[[int, np.ndarray], None]) -> None:
        super().__init__()
        self.on_trigger = on_trigger
        self.outputs = {1: self.values, 2: dict(self.settings)}
        self.shared = dict(self.shared_settings)
        self.arbs: dict[int, dict[str, np.ndarray]] = {1: {}, 2: {}}
        self.channel = 1
        self.handlers.update({
            "DATA:VOL:CLE": lambda a, b: self.arbs[self.channel].clear(),
            "DATA:ARB:DAC": self._upload, "FUNC:ARB": self._select, "VOLT": self._amplitude,
            "VOLT:OFFS": self._offset, "FUNC:ARB:SRAT": self._rate,
            "FUNC:ARB:SRAT?": self._rate_query, "FUNC:ARB:FILT": self._filter,
            "*TRG": lambda a, b: self._trigger()})

    def key(self, key: str) -> str:
        """``SOUR2:VOLT`` -> ``VOLT`` on channel 2, ``OUTP:SYNC`` -> the shared settings."""
        m = re.match(r"(SOUR|OUTP|TRIG)(2?)(?=[:?]|$)", key)
        self.channel = 2 if m and m.group(2) else 1
        if m:
            key = m.group(1) + key[m.end():]
        key = key[5:] if key.startswith("SOUR:") else key
        self.values = self.shared if key.rstrip("?") in SHARED else self.outputs[self.channel]
        return key

    def _on(self, key: str, values: dict[str, str] | None = None) -> bool:
        return (values or self.values)[key].upper() in ("1", "ON")

    def _upload(self, args: str, block: bytes | None) -> None:
        name = args.rstrip(",").strip().strip('"')
        if block is None or not name or len(block) % 2:
            self.error(-104, "Data type error; expected name,#block of int16")
            return
        order = "<i2" if self.shared["FORM:BORD"].upper().startswith("SWAP") else ">i2"
        codes = np.frombuffer(block, order)
        if not 8 <= codes.size <= self.max_points:
            self.error(-222, f"Data out of range; {codes.size} points")
            return
        self.arbs[self.channel][name] = codes

    def _select(self, args: str, block: bytes | None) -> None:
        name = args.strip().strip('"')
        if name not in self.arbs[self.channel]:
            self.error(-221, f"Settings conflict; no arb waveform {name!r} in memory")
            return
        self.values["FUNC:ARB"] = name

    def _rate(self, args: str, block: bytes | None) -> None:
        if not RATE_BOUNDS[0] <= float(args) <= RATE_BOUNDS[1]:
            self.error(-222, "Data out of range; sample rate")
            return
        self.values["FUNC:ARB:SRAT"] = args

    def _filter(self, args: str, block: bytes | None) -> None:
        if args.strip().upper()[:4] not in FILTER_TAPS:
            self.error(-224, "Illegal parameter value; filter")
            return
        self.values["FUNC:ARB:FILT"] = args.strip().upper()[:4]

    def _rate_query(self, args: str, block: bytes | None) -> str:
        bound = {"MIN": RATE_BOUNDS[0], "MAX": RATE_BOUNDS[1]}.get(args.strip().upper()[:3])
        return f"{bound if bound is not None else self.number('FUNC:ARB:SRAT'):+.15E}"

    def _check(self, amplitude: float, offset: float) -> bool:
        top = 10.0 if self.values["OUTP:LOAD"].upper().startswith("INF") else 5.0
        high, low = offset + amplitude / 2, offset - amplitude / 2
        if self._on("VOLT:LIM:STAT"):
            top_ok = high <= self.number("VOLT:LIM:HIGH") + 1e-9
            ok = top_ok and low >= self.number("VOLT:LIM:LOW") - 1e-9
        else:
            ok = True
        if not ok or max(abs(high), abs(low)) > top + 1e-9:
            self.error(-222, "Data out of range; amplitude and offset exceed the limits")
            return False
        return True

    def _amplitude(self, args: str, block: bytes | None) -> None:
        if self._check(float(args), self.number("VOLT:OFFS")):
            self.values["VOLT"] = args

    def _offset(self, args: str, block: bytes | None) -> None:
        if self._check(self.number("VOLT"), float(args)):
            self.values["VOLT:OFFS"] = args

    def sync_fires(self, channel: int) -> bool:
        """Whether Sync marks the start of a burst on ``channel``."""
        s = self.shared
        return (self._on("OUTP:SYNC", s) and s["OUTP:SYNC:SOUR"].upper() == f"CH{channel}"
                and s["OUTP:SYNC:MODE"].upper().startswith("NORM")
                and s["OUTP:SYNC:POL"].upper().startswith("NORM"))

    def _played(self, values: dict[str, str], arbs: dict[str, np.ndarray]) -> np.ndarray | None:
        """The volts a channel plays on a bus trigger, or None if it is not armed for one."""
        ready = (self._on("OUTP", values) and self._on("BURS:STAT", values)
                 and values["TRIG:SOUR"].upper() == "BUS"
                 and values["FUNC"].upper().startswith("ARB") and values["FUNC:ARB"] in arbs)
        if not ready:
            return None
        codes = arbs[values["FUNC:ARB"]]
        volts = float(values["VOLT:OFFS"]) + codes / 32767.0 * float(values["VOLT"]) / 2
        side, centre, _ = FILTER_TAPS[values["FUNC:ARB:FILT"].upper()[:4]]
        if side:
            edges = np.concatenate([volts[:1], volts, volts[-1:]])
            volts = side * (edges[:-2] + edges[2:]) + centre * volts
        if self._on("VOLT:LIM:STAT", values):
            volts = np.clip(volts, float(values["VOLT:LIM:LOW"]), float(values["VOLT:LIM:HIGH"]))
        return volts

    def _trigger(self) -> None:
        played = False
        for channel, values in self.outputs.items():
            volts = self._played(values, self.arbs[channel])
            if volts is not None:
                played = True
                self.on_trigger(channel, volts)
        if not played:
            self.error(-211, "Trigger ignored")


def wire_awg_scope(rig: EmulatedRig, sample_rate: float = 1e6) -> tuple[AwgModel, ScopeModel]:
    """An AWG and a scope on ``rig``: each burst plays its shots into the bench; the scope
    records the concatenated traces if Sync marked that burst (and the scope is armed)."""
    scope = ScopeModel(sample_rate)

    def on_trigger(channel: int, volts: np.ndarray) -> None:
        shots, rest = divmod(volts.size, rig.channels)
        if rest or not shots:
            awg.error(-222, f"Data out of range; waveform of {volts.size} points is not "
                      f"whole shots of {rig.channels}")
            return
        trace = rig.play(volts.reshape(shots, rig.channels)).reshape(-1)
        if awg.sync_fires(channel):
            scope.trigger(trace)

    awg = AwgModel(on_trigger)
    return awg, scope
