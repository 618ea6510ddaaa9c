"""The instrument interface shared by real and simulated drivers.

A physical system is driven by two instruments:

* a ``Drive`` sets the control of one shot: a DAC or arbitrary waveform generator plays a
  waveform of ``channels`` samples; a pulse shaper sets ``channels`` spectral amplitudes;
* a ``Detector`` measures the response of each shot: an ADC or oscilloscope records
  ``samples`` samples; a spectrometer reads ``samples`` pixels.

One measurement of ``B`` shots is, in this order: ``detector.arm(B)``, ``drive.output(patterns)``
with ``patterns`` of shape ``[B, channels]`` in drive units (volts, mask transmission...),
``detector.read()`` returning ``[B, samples]`` in detector units. A drive that can hold at most
``max_shots`` patterns at a time (a pulse shaper holds one) is fed in chunks by the caller.

Life cycle (``Instrument.open``, fixed): ``connect()`` the link, ``identify()`` and check the
answer against ``idn_pattern``, ``configure()`` the instrument, mark it open; if any step fails,
what was connected is disconnected and the error propagates. ``close()`` never raises, so after
a fault the owner calls ``close()`` then ``open()`` and gets a freshly connected, re-identified,
re-configured instrument. A driver writes the hooks and its instrument's commands; the
sequence, the identity check and ``health()`` come from here. ``docs/writing-a-driver.md``
is the author's guide.

Every driver checks ``limits`` before a value reaches the instrument (hardware protection),
raises ``InstrumentError`` naming itself and the failing command (``retryable`` when closing and
opening again may help), and knows nothing of ZeroMQ, the daemon or training.
"""

from __future__ import annotations

import contextlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

#: Arrays up to this many elements are reduced as Python floats: numpy's reductions cost a few
#: microseconds each however small the array, a list of a few dozen floats far less.
SMALL = 64


def span(a: np.ndarray) -> tuple[float, float]:
    """Smallest and largest element of a non-empty float array; NaN in both if any element is
    NaN or infinite (so ``span(a)[0] != span(a)[0]`` says "not all finite")."""
    if a.size <= SMALL:
        values = a.ravel().tolist()
        # min/max of a list skip NaN depending on its position; a finite sum rules NaN and
        # inf out (a sum that is not finite, overflow included, leaves the answer to numpy)
        if math.isfinite(sum(values)):
            return min(values), max(values)
    lo, hi = float(a.min()), float(a.max())  # NaN propagates into both
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    return math.nan, math.nan


def float32_bounds(lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` widened by four float32 steps of its larger end (about 5e-7 of it).

    Arrays on the wire and drive patterns are float32: a value clipped into a range in
    float32 may round past its end (0.8 becomes 0.800000012), and a pattern computed in
    float32 may land a step or two past the float64 span of the ranges. Ranges and limits are
    compared with float32 data through these bounds, so rounding is never refused while
    anything really outside still is."""
    step = 4 * float(np.finfo(np.float32).eps) * max(abs(lo), abs(hi))
    return lo - step, hi + step


class InstrumentError(Exception):
    """An instrument failed. ``retryable`` says whether reopening and retrying may succeed
    (a timeout, a dropped link: yes; a wrong instrument, an error the instrument reports about
    a setting: no)."""

    def __init__(self, instrument: str, message: str, command: str | None = None,
                 retryable: bool = True) -> None:
        where = f"{instrument}" + (f" ({command})" if command else "")
        super().__init__(f"{where}: {message}")
        self.instrument = instrument
        self.command = command
        self.retryable = retryable


class LimitError(ValueError):
    """A value outside an instrument's configured safe range; nothing was sent."""


class Link(ABC):
    """One connection to one instrument: ``drivers.visa.scpi.ScpiLink`` (pyvisa),
    ``drivers.serial.line.LineLink`` (pyserial), or a lab's own.

    ``opener`` makes the transport object (a pyvisa resource, a ``serial.Serial``); tests
    replace it with a fake (``drivers.testing.ExpectedDialogue``). Every transport failure
    becomes a retryable ``InstrumentError`` naming ``owner`` and the command, and the link
    forgets the transport, so the next ``open()`` starts afresh.
    """

    def __init__(self, owner: str, address: str, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"{owner}: timeout_s must be positive, got {timeout_s}")
        self.owner = owner
        self.address = address
        self.timeout_s = float(timeout_s)
        self.opener: Callable[[], Any] = self.connect
        self._port: Any = None

    @abstractmethod
    def connect(self) -> Any:
        """Open and return the transport object (the default ``opener``)."""

    @abstractmethod
    def write(self, command: str) -> None:
        """Send one command."""

    @abstractmethod
    def query(self, command: str) -> str:
        """Send a query and return its reply line, stripped."""

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """(Re)connect, dropping any previous transport first."""
        self.close()
        try:
            self._port = self.opener()
        except Exception as exc:  # pyvisa, pyserial, OSError...: all mean "not reachable"
            raise InstrumentError(self.owner, f"cannot open {self.address}: {exc}",
                                  "open") from exc

    def close(self) -> None:
        """Release the transport; never raises, even for a dead link."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):  # a dead link may fail to close
                port.close()

    def io(self, command: str, action: Callable[[Any], Any]) -> Any:
        """``action(transport)``; any failure but an ``InstrumentError`` closes the link and
        becomes a retryable ``InstrumentError`` naming ``command``."""
        if self._port is None:
            raise InstrumentError(self.owner, "not open", command)
        try:
            return action(self._port)
        except InstrumentError:
            raise
        except Exception as exc:  # timeouts, dropped sockets, unplugged USB serial...
            self.close()
            raise InstrumentError(self.owner, f"{type(exc).__name__}: {exc}", command) from exc


class Instrument:
    """Base of every driver: a named instrument opened by one fixed sequence.

    Class attributes a driver declares:

    * ``idn_pattern``: regular expression the identification must match (``re.search``,
      case-insensitive); ``None`` accepts any;
    * ``idn_query``: what ``identify()`` asks the link (``*IDN?``);
    * ``reported``: attribute names ``health()`` adds to its report.

    Hooks a driver may override: ``connect``/``disconnect`` (default: open/close ``self.link``),
    ``identify`` (default: ``link.query(idn_query)``), ``configure`` (default: nothing).
    """

    idn_pattern: ClassVar[str | None] = None
    idn_query: ClassVar[str] = "*IDN?"
    reported: ClassVar[tuple[str, ...]] = ()
    #: The driver's connection, if it has one (set in ``__init__``).
    link: Link | None = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_open = False
        self.idn = ""

    # -- the life cycle (not to be overridden) ----------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the link is up (a transport fault drops it); ``True`` without a link."""
        return self.link is None or self.link.is_open

    def open(self) -> None:
        """Connect, identify, configure, mark open; on failure disconnect and re-raise.
        Idempotent while connected; after a fault that dropped the link, opens afresh."""
        if self.is_open and self.connected:
            return
        self.close()
        try:
            self.connect()
            self.idn = self.check_identity(self.identify())
            self.configure()
        except BaseException:
            self.close()
            raise
        self.is_open = True

    def close(self) -> None:
        """Mark closed and release the link. Idempotent; never raises, even for a dead link."""
        self.is_open = False
        with contextlib.suppress(Exception):
            self.disconnect()

    def check_identity(self, idn: str) -> str:
        """``idn`` if it matches ``idn_pattern``, else a non-retryable ``InstrumentError``."""
        pattern = self.idn_pattern
        if pattern is not None and not re.search(pattern, idn, re.IGNORECASE):
            where = self.link.address if self.link is not None else self.name
            raise InstrumentError(self.name, f"{where} identifies as {idn!r}, not an "
                                  f"instrument of this driver ({pattern})", self.idn_query,
                                  retryable=False)
        return idn

    def health(self) -> dict[str, Any]:
        """A small JSON-able report for ``status``: open, identity and the ``reported``
        attributes."""
        report: dict[str, Any] = {"open": self.is_open and self.connected, "idn": self.idn}
        if self.link is not None:
            report["address"] = self.link.address
        report.update((key, getattr(self, key)) for key in self.reported)
        return report

    # -- hooks ---------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the link (after a fault too: the link drops any dead transport first)."""
        if self.link is not None:
            self.link.open()

    def disconnect(self) -> None:
        """Release the link. Must not raise for a dead link."""
        if self.link is not None:
            self.link.close()

    def identify(self) -> str:
        """The instrument's own identification (``*IDN?`` or equivalent)."""
        if self.link is None:
            raise NotImplementedError(f"{type(self).__name__} has no link: override identify()")
        return self.link.query(self.idn_query)

    def configure(self) -> None:
        """Put the identified instrument in the state the driver needs (settings, modes)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Drive(Instrument, ABC):
    """Sets the control of each shot: ``channels`` values within ``limits`` (drive units)."""

    #: Largest number of patterns the instrument holds at once; ``None`` for no limit.
    max_shots: int | None = None

    def __init__(self, name: str, channels: int, limits: tuple[float, float]) -> None:
        super().__init__(name)
        if channels < 1:
            raise ValueError(f"{name}: channels must be positive, got {channels}")
        lo, hi = float(limits[0]), float(limits[1])
        if not lo < hi:
            raise ValueError(f"{name}: limits must be [lo, hi] with lo < hi, got {limits}")
        self.channels = channels
        self.limits = (lo, hi)
        self._limits32 = float32_bounds(lo, hi)

    def output(self, patterns: np.ndarray) -> None:
        """Check ``patterns`` ([B, channels]) against the limits, then play them."""
        patterns = np.asarray(patterns)
        if patterns.ndim != 2 or patterns.shape[1] != self.channels:
            raise LimitError(f"{self.name}: patterns must have shape [B, {self.channels}], "
                             f"got {list(patterns.shape)}")
        if self.max_shots is not None and patterns.shape[0] > self.max_shots:
            raise LimitError(f"{self.name}: holds at most {self.max_shots} pattern(s), "
                             f"got {patterns.shape[0]}")
        lo, hi = self._limits32 if patterns.dtype == np.float32 else self.limits
        pmin, pmax = span(patterns)
        if pmin != pmin:  # NaN: the patterns hold NaN or inf
            raise LimitError(f"{self.name}: patterns contain NaN or inf; nothing was sent")
        if pmin < lo or pmax > hi:
            raise LimitError(f"{self.name}: drive [{pmin:g}, {pmax:g}] exceeds the safe range "
                             f"[{lo:g}, {hi:g}]; nothing was sent")
        self._output(patterns)

    @abstractmethod
    def _output(self, patterns: np.ndarray) -> None:
        """Play ``patterns`` (already checked); return when the instrument has them."""


class Detector(Instrument, ABC):
    """Measures ``samples`` values per shot."""

    def __init__(self, name: str, samples: int) -> None:
        super().__init__(name)
        if samples < 1:
            raise ValueError(f"{name}: samples must be positive, got {samples}")
        self.samples = samples
        self._shots = 0

    def arm(self, shots: int) -> None:
        """Prepare to record ``shots`` shots (set up a trigger, a segment count...). The
        default remembers the count for ``armed()``."""
        self._shots = shots

    def armed(self, command: str) -> int:
        """The shots armed for, consumed: a non-retryable ``InstrumentError`` naming
        ``command`` if ``read()`` comes without ``arm()``."""
        shots, self._shots = self._shots, 0
        if shots < 1:
            raise InstrumentError(self.name, "read() without arm()", command, retryable=False)
        return shots

    @abstractmethod
    def read(self) -> np.ndarray:
        """The response of the shots armed for, as ``[shots, samples]``."""
