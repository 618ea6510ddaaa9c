"""What the serving path hands to the measurement store, and the sequence counter.

* ``SequenceCounter.take(n)`` hands out ``n`` consecutive measurement numbers, thread-safe,
  starting where the store says the last run stopped (numbers never repeat across restarts).
* A ``Recorder`` (the store) receives one ``Measurement`` per successful forward request;
  ``record`` returns only once the measurement is durable, so a reply that reached a client
  implies its measurement survives a crash of the daemon.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(slots=True, frozen=True)
class Measurement:
    system: str
    seq: int  # number of row 0; rows are numbered consecutively
    client: str
    request_id: str
    x: np.ndarray  # float32 [B, input_dim]
    theta: np.ndarray  # float32 [param_dim] or [B, param_dim]
    y: np.ndarray  # float32 [B, output_dim]
    received: float  # UNIX time the request arrived (s)
    done: float  # UNIX time the measurement finished (s)
    elapsed_s: float  # instrument time (s)


@dataclass(slots=True, frozen=True)
class Reply:
    """A recorded measurement as the reply it produced (to answer a retried request id)."""

    client: str
    request_id: str
    seq: int
    elapsed_s: float
    y: np.ndarray


class Recorder(Protocol):
    def next_seq(self) -> int:
        """The first measurement number this run may use."""

    def start_run(self, config: dict[str, Any], devices: dict[str, Any]) -> None:
        """Record a daemon start: full configuration and the (hidden-free) device descriptions."""

    def record(self, measurement: Measurement) -> None:
        """Store one measurement; durable when this returns."""

    def recent(self, limit: int) -> list[Reply]:
        """The last ``limit`` recorded measurements, oldest first."""

    def reserve(self, system: str, seq: int, rows: int) -> None:
        """A measurement of a system with ``record = false`` took numbers ``seq`` to
        ``seq + rows - 1``: persist only that (durable when this returns), so ``next_seq``
        never hands them out again."""

    def close(self) -> None: ...


class SequenceCounter:
    def __init__(self, first: int = 0) -> None:
        self._next = first
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        """Reserve ``n`` consecutive numbers; return the first."""
        with self._lock:
            first = self._next
            self._next += n
            return first

    @property
    def next(self) -> int:
        return self._next
