"""A SCPI conversation with one VISA instrument, shared by the VISA drivers.

``ScpiLink`` owns the pyvisa resource of one instrument and turns every transport failure into
an ``InstrumentError`` naming the instrument and the command:

* timeouts, dropped sockets and VISA I/O errors are ``retryable`` (the daemon closes and opens
  the instrument again); the link forgets a resource that failed, so ``open()`` starts afresh;
* errors the instrument itself reports (``SYSTem:ERRor?``) are not retryable.

Commands go out as ASCII lines; binary data as IEEE 488.2 definite-length blocks
``#<n><len><bytes>`` (``n`` digits of ``len``, then ``len`` bytes), the form every SCPI
instrument uses for waveforms and traces. Replies end with ``termination``.

``library`` is the pyvisa back end: ``""`` for the system's VISA (falling back to pyvisa-py),
``"@py"`` for pyvisa-py, ``"path/to/devices.yaml@sim"`` for pyvisa-sim.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

from drivers.base import InstrumentError

#: ``SYSTem:ERRor?`` replies: ``+0,"No error"`` or ``-222,"Data out of range"``.
_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')


def format_block(payload: bytes) -> bytes:
    """``payload`` as an IEEE 488.2 definite-length block ``#<n><len><payload>``."""
    size = str(len(payload)).encode("ascii")
    return b"#" + str(len(size)).encode("ascii") + size + payload


class ScpiLink:
    """The connection to one SCPI instrument named ``owner`` at VISA address ``resource``."""

    def __init__(self, owner: str, resource: str, library: str = "", timeout_s: float = 5.0,
                 termination: str = "\n") -> None:
        if timeout_s <= 0:
            raise ValueError(f"{owner}: timeout_s must be positive, got {timeout_s}")
        self.owner = owner
        self.resource = resource
        self.library = library
        self.timeout_s = float(timeout_s)
        self.termination = termination
        #: Tests may replace the VISA opener with one returning a fake transport.
        self.opener: Callable[[], Any] = self._open_visa
        self._res: Any = None

    # -- connection ---------------------------------------------------------------------------
    def _open_visa(self) -> Any:
        import pyvisa

        rm = pyvisa.ResourceManager(self.library)
        return rm.open_resource(self.resource, timeout=int(self.timeout_s * 1000),
                                read_termination=self.termination,
                                write_termination=self.termination)

    @property
    def is_open(self) -> bool:
        return self._res is not None

    def open(self) -> None:
        """(Re)connect, dropping any previous resource first."""
        self.close()
        try:
            self._res = self.opener()
        except Exception as exc:  # pyvisa raises many types; all mean "not reachable"
            raise InstrumentError(self.owner, f"cannot open {self.resource}: {exc}",
                                  "open") from exc

    def close(self) -> None:
        """Release the resource; never raises, even for a dead link."""
        res, self._res = self._res, None
        if res is not None:
            with contextlib.suppress(Exception):  # a dead link may fail to close
                res.close()

    def _io(self, command: str, action: Callable[[Any], Any]) -> Any:
        if self._res is None:
            raise InstrumentError(self.owner, "not open", command)
        try:
            return action(self._res)
        except InstrumentError:
            raise
        except Exception as exc:  # timeouts, dropped sockets, VISA I/O errors
            self.close()
            raise InstrumentError(self.owner, f"{type(exc).__name__}: {exc}", command) from exc

    # -- messages -----------------------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send one command line."""
        line = (command + self.termination).encode("ascii")
        self._io(command, lambda r: r.write_raw(line))

    def query(self, command: str, timeout_s: float | None = None) -> str:
        """Send a query and return its reply line, stripped; ``timeout_s`` for slow ones."""
        self.write(command)

        def read(res: Any) -> str:
            if timeout_s is None:
                return res.read().strip()
            saved, res.timeout = res.timeout, int(timeout_s * 1000)
            try:
                return res.read().strip()
            finally:
                res.timeout = saved

        return self._io(command, read)

    def write_block(self, command: str, payload: bytes) -> None:
        """Send ``command`` followed by ``payload`` as a definite-length block."""
        message = command.encode("ascii") + format_block(payload) + \
            self.termination.encode("ascii")
        self._io(command, lambda r: r.write_raw(message))

    def query_block(self, command: str) -> bytes:
        """Send a query whose reply is one definite-length block; return the block's bytes."""
        self.write(command)

        def read(res: Any) -> bytes:
            head = res.read_bytes(2)
            if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
                raise InstrumentError(self.owner, f"expected a definite-length block, got "
                                      f"{head!r}", command, retryable=False)
            digits = int(head[1:2])
            size = int(res.read_bytes(digits))
            payload = res.read_bytes(size) if size else b""
            if self.termination:
                res.read_bytes(len(self.termination))
            return payload

        return self._io(command, read)

    def wait_for(self, command: str, done: Callable[[str], bool], timeout_s: float,
                 poll_s: float = 0.002) -> str:
        """Repeat query ``command`` until ``done(reply)``; InstrumentError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.query(command)
            if done(reply):
                return reply
            if time.monotonic() > deadline:
                raise InstrumentError(self.owner, f"no completion within {timeout_s:g} s "
                                      f"(last reply {reply!r})", command)
            time.sleep(poll_s)

    # -- identity and errors ------------------------------------------------------------------
    def identify(self, pattern: str) -> str:
        """``*IDN?``, checked against the regular expression ``pattern`` (not retryable)."""
        idn = self.query("*IDN?")
        if not re.search(pattern, idn, re.IGNORECASE):
            raise InstrumentError(self.owner, f"{self.resource} identifies as {idn!r}, not "
                                  f"an instrument of this driver ({pattern})", "*IDN?",
                                  retryable=False)
        return idn

    def check_errors(self, command: str, query: str = "SYST:ERR?") -> None:
        """Drain the error queue; raise naming ``command`` if the instrument reported any."""
        errors = []
        for _ in range(32):  # SCPI queues hold at most a few dozen entries
            reply = self.query(query)
            m = _ERROR_REPLY.match(reply)
            if m is None:
                raise InstrumentError(self.owner, f"unreadable error reply {reply!r}", query)
            if int(m.group(1)) == 0:
                break
            errors.append(f"{m.group(1)} {m.group(2)}")
        if errors:
            raise InstrumentError(self.owner, "instrument reported: " + "; ".join(errors),
                                  command, retryable=False)
