"""SCPI instruments emulated over raw TCP sockets: the message framing, the common commands
and error queue of an emulated instrument, and the server.

Each instrument listens on its own port, as LAN instruments do (VISA address
``TCPIP::127.0.0.1::<port>::SOCKET``), and answers the subset of its real command set that the
labd drivers use, in short or long form (``SOURce1:FUNCtion:ARBitrary`` = ``SOUR:FUNC:ARB``).
Unknown commands and bad values go to the error queue (``SYST:ERR?``) as on the real
instrument. Binary blocks ``#<n><len><bytes>`` are read and written as the instruments do;
every reply ends in the instrument's own line end (``ScpiModel.end``: LF, or CR LF for the
AQ6370). A model may keep state per connection (``session()``: the AQ6370's log-in).

The instruments: ``drivers.emulators.keysight`` (33500B AWG and InfiniiVision scope wired to a
rig), ``drivers.emulators.yokogawa`` (AQ6370 OSA sweeping a rig's spectrum).

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
    #: What ends every reply (a binary block's too).
    end = b"\n"

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

    def session(self) -> dict[str, object]:
        """Fresh state of one connection (none by default)."""
        return {}

    def receive(self, text: str, block: bytes | None, session: dict[str, object]) -> Response:
        """One message of the connection whose state is ``session``."""
        return self.handle(text, block)

    def key(self, key: str) -> str:
        """Hook to canonicalise keys (an optional leading node)."""
        return key

    def handle(self, text: str, block: bytes | None) -> Response:
        key, args = parse_header(text)
        key = self.key(key)
        if key in self.handlers:
            try:
                return self.handlers[key](args, block)
            except ValueError:
                self.error(-104, f"Data type error; {text.strip()[:40]}")
                return None
        if key in self.values:
            self.values[key] = args
            return None
        if key.endswith("?") and key[:-1] in self.values:
            return self.values[key[:-1]]
        self.error(-113, f"Undefined header; {text.strip()[:40]}")
        return None

    def number(self, key: str) -> float:
        return float(self.values[key])


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
        session = model.session()
        try:
            while data := conn.recv(1 << 16):
                buf += data
                while (message := take_message(buf)) is not None:
                    if self.muted:
                        continue
                    with self.lock:
                        reply = model.receive(*message, session)
                    if isinstance(reply, str):
                        conn.sendall(reply.encode("ascii") + model.end)
                    elif isinstance(reply, bytes):
                        conn.sendall(reply + model.end)
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
