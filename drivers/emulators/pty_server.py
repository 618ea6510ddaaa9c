"""Serial line-protocol instruments emulated on pseudo-terminals, with a simulated bench behind.

``PtyServer(model)`` opens a pty pair (``os.openpty``) and answers on the master side; a driver
opens ``path`` (the slave, e.g. ``/dev/pts/7``) with pyserial exactly as it would open
``/dev/ttyACM0``. ``muted`` makes it read and drop everything without answering. Windows has
no pseudo-terminals: there ``PtyServer`` raises ``NoPty`` (the TCP instruments of
``drivers.emulators.scpi_server`` and the bus of ``drivers.emulators.hardware_server`` run
everywhere).

* ``ShaperModel``: the labd pulse-shaper protocol (``drivers/serial/pulse_shaper.py``); the mask
  it holds is the rig's ``mask``, which the OSA sweeps.
* ``DaqModel``: the serial DAQ protocol (``drivers/serial/serial_daq.py``,
  ``docs/serial-daq-protocol.md``); ``RUN`` plays the uploaded shots into the rig's bench and
  returns the ADC codes of its trace.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading

import numpy as np

from drivers.emulators.rig import EmulatedRig


class LineModel:
    """Splits the byte stream into commands; ``step`` returns the reply of one command."""

    idn = "labd-emulator,DEVICE,0001,1.0"

    def __init__(self, rig: EmulatedRig) -> None:
        self.rig = rig

    def step(self, buf: bytearray) -> bytes | None:
        """Consume one command from ``buf`` and return its reply; ``None`` if incomplete."""
        nl = buf.find(b"\n")
        if nl == -1:
            return None
        line = buf[:nl].decode("ascii", "replace").strip()
        head, _, args = line.partition(" ")
        need = self.payload(head.upper(), args)
        if len(buf) < nl + 1 + need:
            return None
        payload = bytes(buf[nl + 1:nl + 1 + need])
        del buf[:nl + 1 + need]
        if not line:
            return b""
        if head == "*IDN?":
            return self.idn.encode() + b"\n"
        try:
            return self.answer(head.upper(), args, payload)
        except ValueError as exc:
            return f"ERR 2 {exc}\n".encode()

    def payload(self, head: str, args: str) -> int:
        """Raw bytes that follow the command line ``head args``."""
        return 0

    def answer(self, head: str, args: str, payload: bytes) -> bytes:
        raise NotImplementedError


class ShaperModel(LineModel):
    idn = "labd-emulator,PULSESHAPER,0001,1.0"

    def answer(self, head: str, args: str, payload: bytes) -> bytes:
        if head == "CHAN?":
            return f"{self.rig.channels}\n".encode()
        if head == "MASK?":
            mask = self.rig.mask if self.rig.mask is not None else np.zeros(self.rig.channels)
            return (",".join(str(int(c)) for c in np.round(mask * 65535)) + "\n").encode()
        if head == "MASK":
            count, _, values = args.partition(" ")
            codes = np.array([int(v) for v in values.split(",")]) if values else np.zeros(0)
            if int(count) != self.rig.channels or codes.size != self.rig.channels:
                return f"ERR 2 expected {self.rig.channels} codes\n".encode()
            if codes.min() < 0 or codes.max() > 65535:
                return b"ERR 3 code out of range 0..65535\n"
            self.rig.mask = codes / 65535.0
            return b"OK\n"
        return f"ERR 1 unknown command {head}\n".encode()


class DaqModel(LineModel):
    idn = "labd-emulator,SERIALDAQ,0001,1.0"
    bits = 16
    volts = (-5.0, 5.0)
    max_points = 65536

    def __init__(self, rig: EmulatedRig) -> None:
        super().__init__(rig)
        self.rate = 48000.0
        self.wave: np.ndarray | None = None

    def payload(self, head: str, args: str) -> int:
        if head == "WAVE" and args.strip().isdigit():
            return 2 * int(args)
        return 0

    def answer(self, head: str, args: str, payload: bytes) -> bytes:
        lo, hi = self.volts
        full = 2 ** self.bits - 1
        if head == "INFO?":
            return (f"dac_bits={self.bits} adc_bits={self.bits} dac_lo={lo:g} dac_hi={hi:g} "
                    f"adc_lo={lo:g} adc_hi={hi:g} max_points={self.max_points}\n").encode()
        if head == "RATE":
            self.rate = float(args)
            return b"OK\n"
        if head == "RATE?":
            return f"{self.rate:g}\n".encode()
        if head == "WAVE":
            n = int(args)
            if n > self.max_points:
                return b"ERR 3 too many points\n"
            self.wave = lo + np.frombuffer(payload, "<u2") * ((hi - lo) / full)
            return b"OK\n"
        if head == "RUN":
            m = int(args)
            if self.wave is None:
                return b"ERR 4 no waveform\n"
            if m > self.max_points:
                return b"ERR 3 too many points\n"
            shots, rest = divmod(self.wave.size, self.rig.channels)
            if rest or not shots:
                return f"ERR 2 waveform is not whole shots of {self.rig.channels}\n".encode()
            trace = self.rig.play(self.wave.reshape(shots, self.rig.channels)).reshape(-1)
            trace = np.resize(trace, m) if m <= trace.size else \
                np.concatenate([trace, np.full(m - trace.size, trace[-1])])
            codes = np.clip(np.round((trace - lo) / (hi - lo) * full), 0, full)
            return f"DATA {m}\n".encode() + codes.astype("<u2").tobytes()
        return f"ERR 1 unknown command {head}\n".encode()


class NoPty(RuntimeError):
    """This platform has no pseudo-terminals (Windows)."""


class PtyServer:
    """Answers ``model``'s protocol on a fresh pty; ``path`` is the device to open."""

    def __init__(self, model: LineModel) -> None:
        if not hasattr(os, "openpty"):
            raise NoPty(f"the {type(model).__name__.removesuffix('Model').lower()} emulator "
                        f"answers on a pseudo-terminal, which this platform lacks: rehearse "
                        f"serial instruments on Linux or macOS")
        import tty  # (POSIX only)

        self.model = model
        self.muted = False
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray()
        while not self._closed.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                buf += os.read(self._master, 1 << 16)
            except OSError:
                continue
            while (reply := self.model.step(buf)) is not None:
                if reply and not self.muted:
                    os.write(self._master, reply)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
