"""The trainer's view of one physical system behind a labd daemon, with shot counting.

``Hardware(client, system)`` wraps anything with the ``LabClient`` methods ``describe(system)``
and ``forward(system, x, theta)``. ``forward`` takes float arrays, clips them into the system's
declared ranges (the daemon rejects anything outside with ``out_of_range``; clipping only
removes float rounding at the edges, the trainer's reparametrisations keep values inside) and
counts every row sent as one *physical query* (one shot of the instrument). ``instrument_s``
adds up the instrument seconds the daemon reports for each reply (``elapsed_s``), when the
client's ``measure`` gives them (``LabClient`` does; a client with ``forward`` alone adds none).

``connect(endpoint, system, curve=...)`` is the one-line form for a notebook or a script: a
``Hardware`` on its own ``LabClient`` (CURVE keys from ``labd.client.curve_keys`` when the daemon
requires them), closed by ``close()`` or a ``with`` block.

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
    """One system on one daemon; ``queries`` counts shots, ``busy_s`` the time spent waiting.

    ``description`` is the daemon's ``describe`` of the system; its dimensions and ranges are
    also attributes (``input_dim``, ``param_dim``, ``output_dim``, ``input_range``,
    ``param_range``). ``owns_client``: ``close()`` closes the client too (``connect``).
    """

    def __init__(self, client: ClientLike, system: str, endpoint: str = "",
                 owns_client: bool = False) -> None:
        self.client = client
        self.system = system
        self.endpoint = endpoint
        self.owns_client = owns_client
        self.description: dict[str, Any] = dict(client.describe(system))
        self.input_dim = int(self.description["input_dim"])
        self.param_dim = int(self.description["param_dim"])
        self.output_dim = int(self.description["output_dim"])
        self.input_range = tuple(float(v) for v in self.description["input_range"])
        self.param_range = tuple(float(v) for v in self.description["param_range"])
        self.queries = 0
        self.requests = 0
        self.busy_s = 0.0
        self.instrument_s = 0.0

    def __repr__(self) -> str:
        return (f"Hardware({self.system!r} at {self.endpoint or 'a client'}: "
                f"{self.input_dim} inputs, {self.param_dim} parameters, {self.output_dim} "
                f"outputs; {self.queries} shots so far)")

    def forward(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Measured ``y`` [B, output_dim] (float32) for x [B, input_dim], theta [P] or [B, P]."""
        x = np.clip(np.asarray(x, dtype=np.float32), *self.input_range)
        theta = np.clip(np.asarray(theta, dtype=np.float32), *self.param_range)
        x, theta = np.ascontiguousarray(x), np.ascontiguousarray(theta)
        started = time.perf_counter()
        measure = getattr(self.client, "measure", None)
        if measure is not None:
            result = measure(self.system, x, theta)
            y = result.y
            self.instrument_s += result.elapsed_s
        else:
            y = self.client.forward(self.system, x, theta)
        self.busy_s += time.perf_counter() - started
        self.queries += int(x.shape[0])
        self.requests += 1
        return np.asarray(y, dtype=np.float32)

    def close(self) -> None:
        """Close the client if this ``Hardware`` owns it (``connect``); else nothing."""
        if self.owns_client:
            self.client.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Hardware:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(endpoint: str, system: str, curve: dict[str, bytes] | None = None,
            timeout_s: float = 120.0) -> Hardware:
    """``system`` on the daemon at ``endpoint`` (e.g. ``"tcp://labpc:5555"``), on a client of
    its own; ``curve``: the daemon's and this client's keys, ``labd.client.curve_keys(
    "server.key", "NAME.key_secret")``, when the daemon requires CURVE. Raises the client's
    ``LabError`` (``UnknownSystem``, ``ReplyTimeout``, ``Unauthorized``) if it cannot describe
    the system; nothing is left open then."""
    from labd.client import LabClient

    client = LabClient(endpoint, timeout_s=timeout_s, curve=curve)
    try:
        return Hardware(client, system, endpoint, owns_client=True)
    except BaseException:
        client.close()
        raise


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
