"""A line protocol over a serial port (pyserial), shared by the serial drivers.

Commands and replies are ASCII lines ending in ``\\n``; a reply line ``ERR <code> <message>``
is an error the device reports (not retryable); ``OK`` acknowledges a command. Binary payloads
follow their command line as a fixed number of raw bytes announced in that line. A timeout or a
vanished port is a retryable ``InstrumentError``: the link forgets the port, and ``open()``
opens it afresh (a USB serial device that was unplugged comes back under the same name).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from drivers.base import InstrumentError

_ERR = re.compile(r"^ERR\s+(-?\d+)\s*(.*)$")


class LineLink:
    """The serial connection of instrument ``owner`` at ``port`` (``/dev/ttyACM0``, ``COM3``)."""

    def __init__(self, owner: str, port: str, baudrate: int = 115200,
                 timeout_s: float = 2.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"{owner}: timeout_s must be positive, got {timeout_s}")
        self.owner = owner
        self.port = port
        self.baudrate = int(baudrate)
        self.timeout_s = float(timeout_s)
        self._ser: Any = None

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> None:
        """(Re)open the port, dropping any previous connection and stale input."""
        import serial

        self.close()
        try:
            self._ser = serial.Serial(self.port, self.baudrate, timeout=self.timeout_s,
                                      write_timeout=self.timeout_s)
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as exc:
            self._ser = None
            raise InstrumentError(self.owner, f"cannot open {self.port}: {exc}",
                                  "open") from exc

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(Exception):  # a dead link may fail to close
                ser.close()

    def _fail(self, command: str, message: str, exc: Exception | None = None) -> InstrumentError:
        self.close()
        return InstrumentError(self.owner, message + (f": {exc}" if exc else ""), command)

    def send(self, command: str, payload: bytes = b"") -> None:
        """Write ``command`` as a line, then ``payload`` raw."""
        if self._ser is None:
            raise InstrumentError(self.owner, "not open", command)
        try:
            self._ser.write(command.encode("ascii") + b"\n" + payload)
            self._ser.flush()
        except Exception as exc:  # SerialException, SerialTimeoutException, OSError
            raise self._fail(command, "write failed", exc) from exc

    def line(self, command: str) -> str:
        """The next reply line; ``ERR`` replies raise (not retryable)."""
        if self._ser is None:
            raise InstrumentError(self.owner, "not open", command)
        try:
            raw = self._ser.readline()
        except Exception as exc:
            raise self._fail(command, "read failed", exc) from exc
        if not raw.endswith(b"\n"):
            raise self._fail(command, f"no reply within {self.timeout_s:g} s")
        reply = raw.decode("ascii", "replace").strip()
        m = _ERR.match(reply)
        if m:
            raise InstrumentError(self.owner, f"device error {m.group(1)}: {m.group(2)}",
                                  command, retryable=False)
        return reply

    def exact(self, command: str, size: int) -> bytes:
        """Exactly ``size`` raw bytes of a reply."""
        if self._ser is None:
            raise InstrumentError(self.owner, "not open", command)
        try:
            data = self._ser.read(size)
        except Exception as exc:
            raise self._fail(command, "read failed", exc) from exc
        if len(data) != size:
            raise self._fail(command, f"{len(data)} of {size} bytes within {self.timeout_s:g} s")
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

    def identify(self, pattern: str) -> str:
        """``*IDN?`` checked against the regular expression ``pattern`` (not retryable)."""
        idn = self.query("*IDN?")
        if not re.search(pattern, idn, re.IGNORECASE):
            raise InstrumentError(self.owner, f"{self.port} identifies as {idn!r}, not an "
                                  f"instrument of this driver ({pattern})", "*IDN?",
                                  retryable=False)
        return idn
