"""Test a driver without its instrument: an expected-dialogue fake link.

The idea is pymeasure's ``expected_protocol``: a test lists what the driver must send and what
the instrument answers, as ``(sent, reply)`` pairs, and runs the driver against that script::

    from drivers.testing import expected_dialogue

    def test_open_identifies_and_sets_the_range():
        awg = MyAwg("rig.drive", 8, (-1.0, 1.0), "TCPIP::10.0.0.5::5025::SOCKET")
        with expected_dialogue(awg, [("*IDN?", "ACME,AWG-1,0042,1.0"),
                                     ("VOLT:RANG 2", None),
                                     ("SYST:ERR?", '+0,"No error"')]):
            awg.open()

* ``sent`` is the command without its line ending (``str``), the exact bytes of a message
  (``bytes``: a command with a binary block, a serial command with its payload), or a compiled
  regular expression the command text must match in full.
* ``reply`` is ``None`` (nothing comes back), a ``str`` (one line: ``end`` is appended, ``"\\n"``
  or ``"\\r\\n"`` as the instrument ends its lines), ``bytes`` (sent exactly as given: a binary
  block with its line end, a serial data block), or ``SILENT`` (the instrument never answers:
  the driver's read times out, as with a hung instrument).

Anything else fails the test with a message naming the step: a message other than the next
expected one, a message after the script ended, a read when nothing was answered (the driver
waits for a reply that will not come). At the end of the ``with`` block, expected messages never
sent and reply bytes never read fail too (a connection the driver closed drops its unread
bytes, as a real one does). A mismatch is also raised into the driver at once (as a transport
error, which the driver may turn into a retryable ``InstrumentError``); the ``with`` block
reports it all the same.

The fake speaks the part of a pyvisa resource (``write_raw``, ``read``, ``read_bytes``,
``timeout``) and of a ``serial.Serial`` (``write``, ``flush``, ``readline``, ``read``,
``reset_input_buffer``) that ``drivers.visa.scpi.ScpiLink`` and ``drivers.serial.line.LineLink``
use, so the driver's real link code (line endings, binary blocks, error handling) is under test.
Every ``open()`` of the link (a reconnect after a fault included) continues the same script;
``connections`` counts them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: A reply that never comes: the driver's read times out.
SILENT = object()

Sent = str | bytes | re.Pattern[str]
Pair = tuple[Sent, Any]


class DialogueError(AssertionError):
    """The driver's dialogue differed from the expected one."""


class ExpectedDialogue:
    """The instrument side of a scripted dialogue; ``connect()`` is a link's ``opener``."""

    def __init__(self, pairs: Sequence[Pair], end: str = "\n", name: str = "instrument") -> None:
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(f"each step is a (sent, reply) pair, got {pair!r}")
        self.pairs = list(pairs)
        self.end = end.encode("ascii")
        self.name = name
        self.step = 0
        self.connections = 0
        #: Every message the driver sent, as bytes.
        self.sent: list[bytes] = []
        self.failure: DialogueError | None = None
        self._out = bytearray()
        self._silent = False

    # -- the script ---------------------------------------------------------------------------
    def connect(self) -> _FakeTransport:
        self.connections += 1
        return _FakeTransport(self)

    def fail(self, message: str) -> DialogueError:
        """Record the first mismatch (later ones follow from it) and return it to raise."""
        if self.failure is None:
            self.failure = DialogueError(f"{self.name}: {message}")
        return self.failure

    def _expected(self, index: int) -> str:
        sent = self.pairs[index][0]
        return repr(sent.pattern if isinstance(sent, re.Pattern) else sent)

    def receive(self, message: bytes) -> None:
        """The driver wrote ``message``: check it against the next step and queue the reply."""
        if self.failure is not None:
            raise self.failure
        self.sent.append(message)
        if self.step >= len(self.pairs):
            raise self.fail(f"sent {message!r} after the expected dialogue ended "
                            f"({len(self.pairs)} steps)")
        sent, reply = self.pairs[self.step]
        if not _matches(sent, message):
            raise self.fail(f"step {self.step + 1} of {len(self.pairs)}: sent {message!r}, "
                            f"expected {self._expected(self.step)}")
        if self._out:
            raise self.fail(f"step {self.step + 1}: sent {message!r} while the reply "
                            f"{bytes(self._out)!r} to an earlier message was still unread")
        self.step += 1
        self._silent = reply is SILENT
        if isinstance(reply, str):
            self._out += reply.encode("ascii") + self.end
        elif isinstance(reply, bytes | bytearray):
            self._out += reply
        elif reply is not None and reply is not SILENT:
            raise self.fail(f"step {self.step}: a reply is None, SILENT, str or bytes, "
                            f"got {reply!r}")

    def take(self, count: int | None, until: bytes | None = None) -> bytes:
        """Up to ``count`` reply bytes (or through ``until``); a timeout when none are due."""
        if self.failure is not None:
            raise self.failure
        if until is not None and until in self._out:
            count = self._out.index(until) + len(until)
        if not self._out or (count is not None and len(self._out) < count) or \
                (until is not None and count is None):
            if not self._silent:
                last = repr(self.sent[-1]) if self.sent else "nothing"
                self.fail(f"read after {last} (step {self.step}), but no reply is due "
                          f"there: the driver waits for an answer the instrument does not give")
            raise TimeoutError("VI_ERROR_TMO: timeout expired before operation completed "
                               "(expected dialogue)")
        count = len(self._out) if count is None else count
        data = bytes(self._out[:count])
        del self._out[:count]
        return data

    def hang_up(self) -> None:
        """The driver closed its connection: unread reply bytes are gone with it."""
        self._out.clear()

    def finish(self) -> None:
        """Raise ``DialogueError`` for a mismatch, steps never reached or replies never read."""
        if self.failure is not None:
            raise self.failure
        if self.step < len(self.pairs):
            left = len(self.pairs) - self.step
            raise self.fail(f"{left} expected step(s) never happened, from step {self.step + 1}"
                            f": {self._expected(self.step)}")
        if self._out:
            raise self.fail(f"reply bytes never read by the driver: {bytes(self._out)!r}")


def _matches(sent: Sent, message: bytes) -> bool:
    """Whether the written ``message`` is ``sent`` (with or without its line ending)."""
    if isinstance(sent, bytes):
        return message in (sent, sent + b"\n", sent + b"\r\n")
    text = message.decode("ascii", "replace")
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    if isinstance(sent, re.Pattern):
        return sent.fullmatch(text) is not None
    return text == sent


class _FakeTransport:
    """One connection of the dialogue, with the pyvisa and pyserial calls the links use."""

    def __init__(self, dialogue: ExpectedDialogue) -> None:
        self.dialogue = dialogue
        self.timeout = 5000  # ms, as a pyvisa resource
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise ConnectionError("the connection was closed")

    # pyvisa
    def write_raw(self, message: bytes) -> int:
        self._check()
        self.dialogue.receive(bytes(message))
        return len(message)

    def read(self, size: int | None = None) -> Any:
        """pyvisa ``read()``: one line as ``str``; pyserial ``read(size)``: raw bytes."""
        self._check()
        if size is not None:
            return self.dialogue.take(size)
        line = self.dialogue.take(None, until=b"\n")
        return line[:-1].decode("ascii", "replace")

    def read_bytes(self, count: int) -> bytes:
        self._check()
        return self.dialogue.take(count)

    # pyserial
    def write(self, message: bytes) -> int:
        return self.write_raw(message)

    def readline(self) -> bytes:
        self._check()
        try:
            return self.dialogue.take(None, until=b"\n")
        except TimeoutError:
            return b""  # pyserial returns what it has when its timeout expires

    def flush(self) -> None:
        self._check()

    def reset_input_buffer(self) -> None:
        self._check()

    def close(self) -> None:
        """A closed connection drops what the instrument sent and nobody read."""
        if not self.closed:
            self.closed = True
            self.dialogue.hang_up()


@contextmanager
def expected_dialogue(target: Any, pairs: Sequence[Pair], end: str = "\n"
                      ) -> Iterator[ExpectedDialogue]:
    """Run the ``with`` block with ``target`` (a driver with a ``link``, or a link: anything
    with an ``opener`` and ``close()``, as ``drivers.base.Link``) talking to an
    ``ExpectedDialogue`` of ``pairs``; check at the end that it went exactly so."""
    link = target if hasattr(target, "opener") else getattr(target, "link", None)
    if not hasattr(link, "opener"):
        raise TypeError(f"{target!r} has no link to fake: pass a Link (or any link with an "
                        "opener), or a driver whose link attribute is one")
    dialogue = ExpectedDialogue(pairs, end, name=getattr(target, "name", link.owner))
    saved, link.opener = link.opener, dialogue.connect
    try:
        try:
            yield dialogue
        except BaseException as exc:
            if dialogue.failure is not None and dialogue.failure is not exc:
                raise dialogue.failure from exc
            raise
        dialogue.finish()
    finally:
        link.close()
        link.opener = saved
