"""The trainer's view of one physical system behind a labd daemon, with shot counting.

``Hardware(client, system)`` wraps anything with the ``LabClient`` methods ``describe(system)``
and ``forward(system, x, theta)``. ``forward`` takes float arrays, clips them into the system's
declared ranges (the daemon rejects anything outside with ``out_of_range``; clipping only
removes float rounding at the edges, the trainer's reparametrisations keep values inside) and
counts every row sent as one *physical query* (one shot of the instrument).

``Connections`` opens one ``LabClient`` per endpoint and shares it between the layers that live
on the same daemon; a network may span several daemons (one endpoint per layer).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np


class ClientLike(Protocol):
    def describe(self, system: str) -> dict[str, Any]: ...

    def forward(self, system: str, x: np.ndarray, theta: np.ndarray) -> np.ndarray: ...


class Hardware:
    """One system on one daemon; ``queries`` counts shots, ``busy_s`` the time spent waiting."""

    def __init__(self, client: ClientLike, system: str, endpoint: str = "") -> None:
        self.client = client
        self.system = system
        self.endpoint = endpoint
        self.description: dict[str, Any] = dict(client.describe(system))
        self.input_range = tuple(float(v) for v in self.description["input_range"])
        self.param_range = tuple(float(v) for v in self.description["param_range"])
        self.queries = 0
        self.requests = 0
        self.busy_s = 0.0

    def forward(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Measured ``y`` [B, output_dim] (float32) for x [B, input_dim], theta [P] or [B, P]."""
        x = np.clip(np.asarray(x, dtype=np.float32), *self.input_range)
        theta = np.clip(np.asarray(theta, dtype=np.float32), *self.param_range)
        started = time.perf_counter()
        y = self.client.forward(self.system, np.ascontiguousarray(x),
                                np.ascontiguousarray(theta))
        self.busy_s += time.perf_counter() - started
        self.queries += int(x.shape[0])
        self.requests += 1
        return np.asarray(y, dtype=np.float32)


class Connections:
    """``LabClient`` per endpoint, opened on first use, closed together (a context manager)."""

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self._clients: dict[str, Any] = {}

    def client(self, endpoint: str) -> Any:
        if endpoint not in self._clients:
            from labd.client import LabClient

            client = LabClient(endpoint, timeout_s=self.timeout_s)
            client.__enter__()
            self._clients[endpoint] = client
        return self._clients[endpoint]

    def hardware(self, endpoint: str, system: str) -> Hardware:
        return Hardware(self.client(endpoint), system, endpoint)

    def close(self) -> None:
        for client in self._clients.values():
            client.__exit__(None, None, None)
        self._clients.clear()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
