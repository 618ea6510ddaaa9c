"""A scripted stand-in for a pyvisa resource, for protocol-level tests of the VISA drivers.

``ScriptedVisa(replies)`` records every message a driver writes (``written``, raw bytes;
``commands``, the text part of each) and answers a query by its reply in ``replies``: a string
(sent as a line), bytes (sent as they are, e.g. a binary block plus ``\\n``) or a list of them,
served in turn (the last one repeats). A read with nothing to read raises ``TimeoutError`` as a
silent instrument would. Install it with ``driver.link.opener = lambda: scripted``.
"""

from __future__ import annotations


class ScriptedVisa:
    def __init__(self, replies: dict[str, str | bytes | list[str | bytes]]) -> None:
        self.replies = {k: (v if isinstance(v, list) else [v]) for k, v in replies.items()}
        self.written: list[bytes] = []
        self.timeout = 5000
        self.closed = False
        self._out = bytearray()

    @property
    def commands(self) -> list[str]:
        """The text of each message written (a binary block's header text only)."""
        return [m.split(b"#", 1)[0].decode("ascii", "replace").rstrip("\n")
                for m in self.written]

    def write_raw(self, message: bytes) -> int:
        if self.closed:
            raise ConnectionError("write on a closed resource")
        self.written.append(message)
        command = message.decode("ascii", "replace").rstrip("\n")
        queue = self.replies.get(command)
        if queue:
            reply = queue.pop(0) if len(queue) > 1 else queue[0]
            self._out += reply.encode("ascii") + b"\n" if isinstance(reply, str) else reply
        return len(message)

    def read(self) -> str:
        nl = self._out.find(b"\n")
        if nl == -1:
            raise TimeoutError("VI_ERROR_TMO: timeout expired before operation completed")
        line = self._out[:nl].decode("ascii")
        del self._out[:nl + 1]
        return line

    def read_bytes(self, count: int) -> bytes:
        if len(self._out) < count:
            raise TimeoutError("VI_ERROR_TMO: timeout expired before operation completed")
        data = bytes(self._out[:count])
        del self._out[:count]
        return data

    def close(self) -> None:
        self.closed = True
