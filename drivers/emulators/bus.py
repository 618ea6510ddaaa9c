"""The wire between the fake vendor libraries and the emulated hardware.

A real vendor library talks to its instrument through a kernel driver (NI-DAQmx, PortAudio,
libusb); the fakes in ``drivers/emulators/vendor/`` talk to the emulated instruments of
``drivers.emulators.hardware`` through this bus instead: a ``multiprocessing.connection``
over a Unix socket (no Nagle delays: a call costs ~0.1 ms), one request at a time per
connection, ``(device, method, args)`` in, ``("ok", value)`` or ``("error", type name,
message)`` out. On Windows, which has no Unix sockets in ``multiprocessing``, the bus is a
named pipe (``\\\\.\\pipe\\labd-emulator-...``) instead.

``serve(devices)`` runs the hardware side (``drivers.emulators.hardware_server`` does it in its
own process); ``Bus.connect()`` is the library side: the address comes from the environment
variable ``LABD_EMULATOR`` (the socket's path or the pipe's name), which ``hardware_server``
prints.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import uuid
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, ClassVar

#: Shared by both ends; the socket is the user's own (mode 0600) and carries no secrets.
AUTHKEY = b"labd-emulated-hardware"
ENV = "LABD_EMULATOR"


class BusError(RuntimeError):
    """The emulated hardware could not be reached, or failed inside (an emulator bug)."""


def serve(devices: dict[str, Any], path: str | None = None) -> Listener:
    """Answer calls on ``devices`` (name -> object) from a background thread per connection,
    at ``path``, a Unix socket's path or a named pipe's name (default: ``fresh_address()``);
    returns the listener (``listener.address`` is that address)."""
    listener = Listener(path or fresh_address(), authkey=AUTHKEY)

    def answer(conn: Connection) -> None:
        with conn:
            while True:
                try:
                    device, method, args = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    reply = ("ok", getattr(devices[device], method)(*args))
                except Exception as exc:  # noqa: BLE001 (sent back: the library raises it)
                    reply = ("error", type(exc).__name__, str(exc))
                conn.send(reply)

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, name="emulated-hardware", daemon=True).start()
    return listener


def fresh_address() -> str:
    """A new private bus address: a Unix socket in a private temporary directory (POSIX), a
    named pipe of a random name (Windows)."""
    if sys.platform == "win32":
        return rf"\\.\pipe\labd-emulator-{uuid.uuid4().hex}"
    return os.path.join(tempfile.mkdtemp(prefix="labd-emulator-"), "bus")


class Bus:
    """The library side: one connection per process, shared by every fake object."""

    _shared: ClassVar[Bus | None] = None
    _guard = threading.Lock()

    def __init__(self, address: str) -> None:
        try:
            self.conn = Client(address, authkey=AUTHKEY)
        except (OSError, ValueError) as exc:
            raise BusError(f"no emulated hardware at {ENV}={address!r}: {exc}") from None
        self.lock = threading.Lock()

    @classmethod
    def connect(cls) -> Bus:
        with cls._guard:
            if cls._shared is None:
                address = os.environ.get(ENV)
                if not address:
                    raise BusError(f"{ENV} is not set: start `python -m "
                                   f"drivers.emulators.hardware_server` and export the "
                                   f"address it prints")
                cls._shared = cls(address)
            return cls._shared

    def call(self, device: str, method: str, *args: Any) -> Any:
        with self.lock:
            try:
                self.conn.send((device, method, args))
                reply = self.conn.recv()
            except (EOFError, OSError) as exc:
                raise BusError(f"the emulated hardware went away: {exc}") from None
        if reply[0] == "error":
            raise BusError(f"emulated {device}.{method}: {reply[1]}: {reply[2]}")
        return reply[1]
