"""SCPI instruments emulated over raw TCP sockets, with a simulated bench behind them.

Each instrument listens on its own port, as LAN instruments do (VISA address
``TCPIP::127.0.0.1::<port>::SOCKET``), and answers the subset of its real command set that the
labd drivers use, in short or long form (``SOURce1:FUNCtion:ARBitrary`` = ``SOUR:FUNC:ARB``).
Unknown commands and bad values go to the error queue (``SYST:ERR?``) as on the real
instrument. Binary blocks ``#<n><len><bytes>`` are read and written as the instruments do.

* ``AwgModel`` (Keysight 33500B): DAC codes, amplitude, offset, voltage limits, triggered burst.
  ``*TRG`` plays the waveform into the rig; the shots go to the bench and the scope records.
* ``ScopeModel`` (Keysight InfiniiVision): single acquisitions of the bench's trace, signed WORD
  or BYTE codes with a consistent preamble.
* ``OsaModel`` (Yokogawa AQ6370): ``:INIT`` sweeps the bench's spectrum of the shaper's mask,
  resampled onto the sweep points, in dBm (noise floor -90 dBm).

``TcpServer.muted`` (the process toggles it on SIGUSR1) makes every instrument stop answering
while still reading, like a hung instrument; ``drop()`` closes every connection, like a pulled
cable.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from drivers.emulators.rig import EmulatedRig
from drivers.visa.scpi import format_block

#: What a command handler answers: text, a binary block, or nothing (a command, not a query).
Response = str | bytes | None


def mnemonic(token: str) -> str:
    """The SCPI short form of one header token, default suffix 1 dropped (``CHANnel1`` ->
    ``CHAN``, ``ARBitrary`` -> ``ARB``)."""
    m = re.fullmatch(r"(\*?[A-Za-z]+)(\d*)", token)
    if m is None:
        return token.upper()
    letters, suffix = m.group(1).upper(), m.group(2)
    if len(letters) > 4 and not letters.startswith("*"):
        letters = letters[:3] if letters[3] in "AEIOU" else letters[:4]
    return letters + ("" if suffix == "1" else suffix)


def parse_header(text: str) -> tuple[str, str]:
    """``(key, arguments)``: ``"SOURce1:VOLTage:OFFSet 0.5"`` -> ``("SOUR:VOLT:OFFS", "0.5")``."""
    header, _, args = text.strip().partition(" ")
    query = header.endswith("?")
    tokens = [mnemonic(t) for t in header.rstrip("?").strip(":").split(":")]
    return ":".join(tokens) + ("?" if query else ""), args.strip()


def take_message(buf: bytearray) -> tuple[str, bytes | None] | None:
    """Remove one message from ``buf``: ``(text, block)``; ``None`` while it is incomplete."""
    nl = buf.find(b"\n")
    hs = buf.find(b"#")
    if hs != -1 and (nl == -1 or hs < nl):
        if len(buf) < hs + 2:
            return None
        digits = buf[hs + 1] - 48
        if 1 <= digits <= 9:
            if len(buf) < hs + 2 + digits:
                return None
            size = int(buf[hs + 2:hs + 2 + digits])
            end = hs + 2 + digits + size
            if len(buf) < end + 1:
                return None
            text, block = buf[:hs].decode("ascii", "replace"), bytes(buf[hs + 2 + digits:end])
            del buf[:end + (1 if buf[end:end + 1] == b"\n" else 0)]
            return text, block
    if nl == -1:
        return None
    text = buf[:nl].decode("ascii", "replace")
    del buf[:nl + 1]
    return text, None


class ScpiModel:
    """Common commands, settings and the error queue of an emulated SCPI instrument."""

    idn = "labd,EMULATOR,0,1.0"
    #: Settable values: key -> default; ``KEY value`` sets, ``KEY?`` returns it.
    settings: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.values = dict(self.settings)
        self.errors: deque[tuple[int, str]] = deque(maxlen=30)
        self.handlers: dict[str, Callable[[str, bytes | None], Response]] = {
            "*IDN?": lambda a, b: self.idn, "*CLS": lambda a, b: self.errors.clear(),
            "*OPC?": lambda a, b: "1", "SYST:ERR?": lambda a, b: self._next_error()}

    def error(self, code: int, message: str) -> None:
        self.errors.append((code, message))

    def _next_error(self) -> str:
        code, message = self.errors.popleft() if self.errors else (0, "No error")
        return f'{code:+d},"{message}"'

    def key(self, key: str) -> str:
        """Hook to canonicalise keys (an optional leading node)."""
        return key

    def handle(self, text: str, block: bytes | None) -> Response:
        key, args = parse_header(text)
        key = self.key(key)
        if key in self.handlers:
            return self.handlers[key](args, block)
        if key in self.values:
            self.values[key] = args
            return None
        if key.endswith("?") and key[:-1] in self.values:
            return self.values[key[:-1]]
        self.error(-113, f"Undefined header; {text.strip()[:40]}")
        return None

    def number(self, key: str) -> float:
        return float(self.values[key])


class ScopeModel(ScpiModel):
    idn = "KEYSIGHT TECHNOLOGIES,DSOX3024T,EMU00001,07.50"
    settings: ClassVar[dict[str, str]] = {
                "CHAN:DISP": "1", "CHAN:RANG": "8", "CHAN:OFFS": "0", "TRIG:MODE": "EDGE",
                "TRIG:EDGE:SOUR": "CHAN1", "TRIG:EDGE:SLOP": "POS", "TRIG:EDGE:LEV": "0",
                "TRIG:SWE": "AUTO", "TIM:REF": "CENT", "TIM:POS": "0", "TIM:RANG": "1e-3",
                "ACQ:TYPE": "NORM", "WAV:SOUR": "CHAN1", "WAV:FORM": "BYTE",
                "WAV:BYT": "MSBF", "WAV:UNS": "1", "WAV:POIN:MODE": "NORM", "WAV:POIN": "1000"}

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.record: np.ndarray | None = None
        self.handlers.update({
            "STOP": lambda a, b: self._stop(), "SING": lambda a, b: self._single(),
            "AER?": lambda a, b: "1" if self.armed else "0",
            "OPER:COND?": lambda a, b: "+8" if self.armed else "+0",
            "WAV:PRE?": lambda a, b: self._preamble(), "WAV:DATA?": lambda a, b: self._data()})

    def _stop(self) -> None:
        self.armed = False

    def _single(self) -> None:
        self.armed, self.record = True, None

    def acquire(self, volts: np.ndarray) -> None:
        """The trigger arrived: record ``volts`` if armed."""
        if self.armed:
            self.armed, self.record = False, np.asarray(volts, dtype=np.float64)

    def _scale(self) -> tuple[str, float, float, int]:
        word = self.values["WAV:FORM"].upper().startswith("WORD")
        bits = 16 if word else 8
        return ("<i2" if word else "i1"), self.number("CHAN:RANG") / 2 ** bits, \
            self.number("CHAN:OFFS"), 2 ** (bits - 1) - 1

    def _preamble(self) -> str:
        dtype, yinc, yorig, _ = self._scale()
        n = 0 if self.record is None else self.record.size
        xinc = self.number("TIM:RANG") / max(n, 1)
        fmt = 1 if dtype == "<i2" else 0
        return (f"+{fmt},+0,+{n},+1,{xinc:+.9E},{self.number('TIM:POS'):+.9E},+0,"
                f"{yinc:+.9E},{yorig:+.9E},+0")

    def _data(self) -> bytes:
        if self.record is None:
            self.error(-222, "Data out of range; no acquisition")
            return format_block(b"")
        dtype, yinc, yorig, top = self._scale()
        codes = np.clip(np.round((self.record - yorig) / yinc), -top, top)
        return format_block(codes.astype(dtype).tobytes())


class AwgModel(ScpiModel):
    idn = "Keysight Technologies,33522B,MY5EMU0001,4.00-1.19-2.00-58-00"
    settings: ClassVar[dict[str, str]] = {
                "OUTP:LOAD": "50", "OUTP": "0", "VOLT": "0.1", "VOLT:OFFS": "0",
                "VOLT:LIM:HIGH": "5", "VOLT:LIM:LOW": "-5", "VOLT:LIM:STAT": "0",
                "BURS:MODE": "TRIG", "BURS:NCYC": "1", "BURS:STAT": "0", "TRIG:SOUR": "IMM",
                "FUNC": "SIN", "FUNC:ARB": "", "FUNC:ARB:SRAT": "40000", "FORM:BORD": "NORM"}
    max_points = 1_000_000

    def __init__(self, on_trigger: Callable[[np.ndarray], None]) -> None:
        super().__init__()
        self.on_trigger = on_trigger
        self.arbs: dict[str, np.ndarray] = {}
        self.handlers.update({
            "DATA:VOL:CLE": lambda a, b: self.arbs.clear(), "DATA:ARB:DAC": self._upload,
            "FUNC:ARB": self._select, "VOLT": self._amplitude, "VOLT:OFFS": self._offset,
            "*TRG": lambda a, b: self._trigger()})

    def key(self, key: str) -> str:
        return key[5:] if key.startswith("SOUR:") else key

    def _on(self, key: str) -> bool:
        return self.values[key].upper() in ("1", "ON")

    def _upload(self, args: str, block: bytes | None) -> None:
        name = args.rstrip(",").strip().strip('"')
        if block is None or not name or len(block) % 2:
            self.error(-104, "Data type error; expected name,#block of int16")
            return
        order = "<i2" if self.values["FORM:BORD"].upper().startswith("SWAP") else ">i2"
        codes = np.frombuffer(block, order)
        if not 8 <= codes.size <= self.max_points:
            self.error(-222, f"Data out of range; {codes.size} points")
            return
        self.arbs[name] = codes

    def _select(self, args: str, block: bytes | None) -> None:
        name = args.strip().strip('"')
        if name not in self.arbs:
            self.error(-221, f"Settings conflict; no arb waveform {name!r} in memory")
            return
        self.values["FUNC:ARB"] = name

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

    def _trigger(self) -> None:
        ready = (self._on("OUTP") and self._on("BURS:STAT")
                 and self.values["TRIG:SOUR"].upper() == "BUS"
                 and self.values["FUNC"].upper().startswith("ARB")
                 and self.values["FUNC:ARB"] in self.arbs)
        if not ready:
            self.error(-211, "Trigger ignored")
            return
        codes = self.arbs[self.values["FUNC:ARB"]]
        volts = self.number("VOLT:OFFS") + codes / 32767.0 * self.number("VOLT") / 2
        if self._on("VOLT:LIM:STAT"):
            volts = np.clip(volts, self.number("VOLT:LIM:LOW"), self.number("VOLT:LIM:HIGH"))
        self.on_trigger(volts)


class OsaModel(ScpiModel):
    idn = "YOKOGAWA,AQ6374,EMU0001,01.01"
    settings: ClassVar[dict[str, str]] = {
                "SENS:WAV:STAR": "350NM", "SENS:WAV:STOP": "1200NM", "SENS:SWE:POIN": "1001",
                "SENS:BAND:RES": "0.1NM", "SENS:SENS": "MID", "DISP:TRAC:Y:SPAC": "LOG",
                "INIT:SMOD": "REP", "FORM:DATA": "ASCII"}
    floor_dbm = -90.0

    def __init__(self, rig: EmulatedRig) -> None:
        super().__init__()
        self.rig = rig
        self.trace: np.ndarray | None = None
        self.handlers.update({"INIT": lambda a, b: self._sweep(), "TRAC:Y?": self._trace})

    def _sweep(self) -> None:
        spectrum = self.rig.sweep()
        points = int(self.number("SENS:SWE:POIN"))
        resampled = np.interp(np.linspace(0, 1, points), np.linspace(0, 1, spectrum.size),
                              spectrum)
        self.trace = 10 * np.log10(np.maximum(resampled, 10 ** (self.floor_dbm / 10)))

    def _trace(self, args: str, block: bytes | None) -> Response:
        if args.strip().upper() != "TRA" or self.trace is None:
            self.error(-221, "Settings conflict; no trace TRA")
            return "0"
        if self.values["FORM:DATA"].upper().startswith("REAL"):
            return format_block(self.trace.astype("<f4").tobytes())
        return ",".join(f"{v:+.6E}" for v in self.trace)


class TcpServer:
    """Serves each model on its own TCP port; one thread per connection."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.muted = False
        self.lock = threading.Lock()  # one command at a time across instruments of the rig
        self._listeners: list[socket.socket] = []
        self._clients: set[socket.socket] = set()
        self._closed = threading.Event()

    def serve(self, model: ScpiModel, port: int = 0) -> str:
        """Start serving ``model``; return its VISA address."""
        listener = socket.create_server((self.host, port))
        self._listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener, model), daemon=True).start()
        return f"TCPIP::{self.host}::{listener.getsockname()[1]}::SOCKET"

    def _accept(self, listener: socket.socket, model: ScpiModel) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients.add(conn)
            threading.Thread(target=self._talk, args=(conn, model), daemon=True).start()

    def _talk(self, conn: socket.socket, model: ScpiModel) -> None:
        buf = bytearray()
        try:
            while data := conn.recv(1 << 16):
                buf += data
                while (message := take_message(buf)) is not None:
                    if self.muted:
                        continue
                    with self.lock:
                        reply = model.handle(*message)
                    if isinstance(reply, str):
                        conn.sendall(reply.encode("ascii") + b"\n")
                    elif isinstance(reply, bytes):
                        conn.sendall(reply + b"\n")
        except OSError:
            pass
        finally:
            self._clients.discard(conn)
            conn.close()

    def drop(self) -> None:
        """Close every client connection (the instruments stay up)."""
        for conn in list(self._clients):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            listener.close()
        self.drop()


def wire_awg_scope(rig: EmulatedRig) -> tuple[AwgModel, ScopeModel]:
    """An AWG and a scope on ``rig``: each ``*TRG`` plays the waveform's shots into the bench
    and the scope records the concatenated traces (when armed)."""
    scope = ScopeModel()

    def on_trigger(volts: np.ndarray) -> None:
        shots, rest = divmod(volts.size, rig.channels)
        if rest or not shots:
            awg.error(-222, f"Data out of range; waveform of {volts.size} points is not "
                      f"whole shots of {rig.channels}")
            return
        scope.acquire(rig.play(volts.reshape(shots, rig.channels)).reshape(-1))

    awg = AwgModel(on_trigger)
    return awg, scope
