"""A SCPI conversation with one VISA instrument, shared by the VISA drivers.

``ScpiLink`` owns the pyvisa resource of one instrument (a ``drivers.base.Link``): transport
failures (timeouts, dropped sockets, VISA I/O errors) are retryable ``InstrumentError`` naming
the instrument and the command; errors the instrument itself reports (``SYSTem:ERRor?``) are
not retryable.

Commands go out as ASCII lines ending in ``\\n``; replies are read up to ``\\n`` and stripped,
so instruments that end replies in CR LF (LAN sockets of many instruments, the AQ6370's among
them) read the same as LF ones. Binary data travel as IEEE 488.2 definite-length blocks
``#<n><len><bytes>`` (``n`` digits of ``len``, then ``len`` bytes); after a block's bytes the
rest of its line (``\\n`` or ``\\r\\n``) is consumed, so nothing is left for the next reply.

``ScpiInstrument`` is the SCPI half of a driver (as pymeasure's ``SCPIMixin``): its
``configure()`` sends the driver's ``setup()`` commands in order and then reads the error
queue, so a setting the instrument refused fails ``open()``.

``library`` is the pyvisa back end: ``""`` for the system's VISA (falling back to pyvisa-py),
``"@py"`` for pyvisa-py, ``"path/to/devices.yaml@sim"`` for pyvisa-sim.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, ClassVar

from drivers.base import InstrumentError, Link

#: ``SYSTem:ERRor?`` replies: ``+0,"No error"`` or ``-222,"Data out of range"``.
_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')


def format_block(payload: bytes) -> bytes:
    """``payload`` as an IEEE 488.2 definite-length block ``#<n><len><payload>``."""
    size = str(len(payload)).encode("ascii")
    return b"#" + str(len(size)).encode("ascii") + size + payload


class ScpiLink(Link):
    """The connection to one SCPI instrument named ``owner`` at VISA address ``resource``."""

    def __init__(self, owner: str, resource: str, library: str = "",
                 timeout_s: float = 5.0) -> None:
        super().__init__(owner, resource, timeout_s)
        self.library = library

    @property
    def is_socket(self) -> bool:
        """Whether the address is a raw LAN socket (``TCPIP::host::port::SOCKET``)."""
        return self.address.upper().endswith("::SOCKET")

    def connect(self) -> Any:
        import pyvisa

        rm = pyvisa.ResourceManager(self.library)
        return rm.open_resource(self.address, timeout=int(self.timeout_s * 1000),
                                read_termination="\n", write_termination="\n")

    # -- messages -----------------------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send one command line."""
        line = (command + "\n").encode("ascii")
        self.io(command, lambda r: r.write_raw(line))

    def read(self, command: str, timeout_s: float | None = None) -> str:
        """The next reply line, stripped (``command`` names it in errors)."""

        def read(res: Any) -> str:
            if timeout_s is None:
                return res.read().strip()
            saved, res.timeout = res.timeout, int(timeout_s * 1000)
            try:
                return res.read().strip()
            finally:
                res.timeout = saved

        return self.io(command, read)

    def query(self, command: str, timeout_s: float | None = None) -> str:
        """Send a query and return its reply line, stripped; ``timeout_s`` for slow ones."""
        self.write(command)
        return self.read(command, timeout_s)

    def write_block(self, command: str, payload: bytes) -> None:
        """Send ``command`` followed by ``payload`` as a definite-length block."""
        message = command.encode("ascii") + format_block(payload) + b"\n"
        self.io(command, lambda r: r.write_raw(message))

    def query_block(self, command: str) -> bytes:
        """Send a query whose reply is one definite-length block; return the block's bytes."""
        self.write(command)

        def read(res: Any) -> bytes:
            head = res.read_bytes(2)
            if head[:1] != b"#" or not head[1:2].isdigit() or head[1:2] == b"0":
                self.close()  # the rest of that reply would be read as the next one
                raise InstrumentError(self.owner, f"expected a definite-length block, got "
                                      f"{head!r}", command, retryable=False)
            size = int(res.read_bytes(int(head[1:2])))
            payload = res.read_bytes(size) if size else b""
            end = res.read_bytes(1)
            if end == b"\r":  # CR LF: the LF is part of this reply too
                end = res.read_bytes(1)
            if end != b"\n":
                self.close()
                raise InstrumentError(self.owner, f"a {size}-byte block ends in {end!r}, not "
                                      "the end of its line", command, retryable=False)
            return payload

        return self.io(command, read)

    def wait_for(self, command: str, done: Callable[[str], bool], timeout_s: float,
                 poll_s: float = 0.002) -> str:
        """Repeat query ``command`` every ``poll_s`` until ``done(reply)``; InstrumentError
        after ``timeout_s`` (retryable) or for a reply ``done`` cannot read (not retryable)."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.query(command)
            try:
                finished = done(reply)
            except ValueError:
                raise InstrumentError(self.owner, f"unreadable reply {reply!r}", command,
                                      retryable=False) from None
            if finished:
                return reply
            if time.monotonic() > deadline:
                raise InstrumentError(self.owner, f"no completion within {timeout_s:g} s "
                                      f"(last reply {reply!r})", command)
            time.sleep(poll_s)

    # -- errors -------------------------------------------------------------------------------
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


class ScpiInstrument:
    """The SCPI conventions of a driver on a ``ScpiLink`` (mix in before ``Drive`` or
    ``Detector``): ``configure()`` sends ``setup()`` in order, then drains the error queue
    (``error_query``) and fails the open if the instrument refused anything."""

    error_query: ClassVar[str] = "SYST:ERR?"
    link: ScpiLink

    def setup(self) -> list[str]:
        """The commands that put the instrument in the driver's state, in order."""
        return ["*CLS"]

    def configure(self) -> None:
        for command in self.setup():
            self.link.write(command)
        self.check_errors("open")

    def check_errors(self, command: str) -> None:
        """Raise (not retryable) naming ``command`` if the instrument reported errors."""
        self.link.check_errors(command, self.error_query)
