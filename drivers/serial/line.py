"""A line protocol over a serial port (pyserial), shared by the serial drivers.

Commands and replies are ASCII lines ending in ``\\n``; a reply line ``ERR <code> <message>``
is an error the device reports (not retryable); ``OK`` acknowledges a command. Binary payloads
follow their command line as a fixed number of raw bytes announced in that line. A timeout or a
vanished port is a retryable ``InstrumentError``: the link forgets the port, and ``open()``
opens it afresh (a USB serial device that was unplugged comes back under the same name).
"""

from __future__ import annotations

import re
from typing import Any

from drivers.base import InstrumentError, Link

_ERR = re.compile(r"^ERR\s+(-?\d+)\s*(.*)$")


class LineLink(Link):
    """The serial connection of instrument ``owner`` at ``port`` (``/dev/ttyACM0``, ``COM3``)."""

    def __init__(self, owner: str, port: str, baudrate: int = 115200,
                 timeout_s: float = 2.0) -> None:
        super().__init__(owner, port, timeout_s)
        self.baudrate = int(baudrate)

    def connect(self) -> Any:
        """The port, opened with stale input dropped."""
        import serial

        port = serial.Serial(self.address, self.baudrate, timeout=self.timeout_s,
                             write_timeout=self.timeout_s)
        port.reset_input_buffer()
        return port

    def send(self, command: str, payload: bytes = b"") -> None:
        """Write ``command`` as a line, then ``payload`` raw."""

        def send(port: Any) -> None:
            port.write(command.encode("ascii") + b"\n" + payload)
            port.flush()

        self.io(command, send)

    def write(self, command: str) -> None:
        self.send(command)

    def line(self, command: str) -> str:
        """The next reply line; ``ERR`` replies raise (not retryable)."""
        raw = self.io(command, lambda port: port.readline())
        if not raw.endswith(b"\n"):
            self.close()
            raise InstrumentError(self.owner, f"no reply within {self.timeout_s:g} s", command)
        reply = raw.decode("ascii", "replace").strip()
        m = _ERR.match(reply)
        if m:
            raise InstrumentError(self.owner, f"device error {m.group(1)}: {m.group(2)}",
                                  command, retryable=False)
        return reply

    def exact(self, command: str, size: int) -> bytes:
        """Exactly ``size`` raw bytes of a reply."""
        data = self.io(command, lambda port: port.read(size))
        if len(data) != size:
            self.close()
            raise InstrumentError(self.owner, f"{len(data)} of {size} bytes within "
                                  f"{self.timeout_s:g} s", command)
        return data

    def query(self, command: str, payload: bytes = b"") -> str:
        """Send ``command`` (and ``payload``) and return the reply line."""
        self.send(command, payload)
        return self.line(command)

    def command(self, command: str, payload: bytes = b"") -> None:
        """Send ``command`` (and ``payload``) and expect ``OK``."""
        reply = self.query(command, payload)
        if reply != "OK":
            raise InstrumentError(self.owner, f"expected OK, got {reply!r}", command,
                                  retryable=False)
