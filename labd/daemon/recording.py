"""How the daemon records its measurements: sequence numbers and the measurement store.

* ``SequenceCounter.take(n)`` hands out ``n`` consecutive measurement numbers, thread-safe,
  starting where the store says the last run stopped (numbers never repeat across restarts).
* ``open_store(options)`` opens the ``labd.store.writer.Store`` of the ``[store]`` table. The
  server hands it one ``Measurement`` per successful forward request (``reserve`` for systems
  with ``record = false``) and sends the reply only once ``record`` has returned, so a reply
  that reached a client implies its measurement survives a crash of the daemon.
* ``package_versions()``: what the run record says the daemon ran on.
"""

from __future__ import annotations

import contextlib
import threading
from importlib.metadata import PackageNotFoundError, version

from labd.config import StoreConfig
from labd.store.writer import Store

PACKAGES = ("labd", "numpy", "torch", "pyzmq", "pydantic")


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


def open_store(options: StoreConfig) -> Store:
    return Store(options.path, synchronous=options.synchronous, max_bytes=options.max_bytes,
                 max_age_days=options.max_age_days, prune_interval_s=options.prune_interval_s)


def package_versions() -> dict[str, str]:
    """Versions of the installed packages the daemon depends on (without importing them)."""
    out = {}
    for dist in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out
