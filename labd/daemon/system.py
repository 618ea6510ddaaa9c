"""A physical system as the daemon serves it: ``forward(x, theta)`` turned into instrument calls.

``PhysicalSystem`` owns one drive and one detector (real or simulated: the code is the same) and
implements, for a validated request:

1. ``check(x, theta)``: shapes against the system's dimensions (``bad_array``), every value
   finite and inside ``input_range`` / ``param_range`` (``out_of_range``). Runs before a request
   is queued, so nothing malformed ever reaches an instrument.
2. ``measure(x, theta, meanwhile)``: encode to drive patterns, then per chunk of at most
   ``max_batch`` shots (and at most what the drive holds): ``detector.arm``, ``drive.output``,
   (the first time: ``meanwhile()``, other work done while the shots run), ``detector.read``,
   decode. Returns ``y`` (float32 ``[B, output_dim]``) and the seconds the instruments spent
   (from ``arm`` to the end of ``read``).

A driver exception becomes ``SystemFault`` (with ``retryable``); the daemon then closes and
reopens the instruments before the next request.

``build_systems(config)`` makes every system of a configuration without opening anything (the
classes its tables name, checked against their interfaces and signatures, see
``drivers.rig``; the nominal model's name), or raises ``ConfigError`` listing every problem of
every system: what ``labd serve`` does before it binds or records anything, and what ``labd
config --check`` reports.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from drivers import plugins
from drivers.base import Detector, Drive, InstrumentError, LimitError, float32_bounds, span
from drivers.plugins import PluginError
from drivers.rig import RigError, build_rig
from labd.config import ConfigError, DaemonConfig, SystemConfig
from protocols.v1 import ErrorCode, ProtocolError


class SystemFault(Exception):
    """The instruments failed while measuring; ``retryable`` says whether a retry may work."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def nominal_spec(config: SystemConfig) -> dict[str, str | None] | None:
    """What ``describe`` tells of the system's nominal model (``drivers.plugins.spec``; nothing
    imported), or None: ``nominal = ""``, or not set and no model registered for the kind."""
    name = config.nominal
    if name is None:
        name = config.kind if config.kind in plugins.registered("physics") else ""
    return plugins.spec("physics", name) if name else None


class PhysicalSystem:
    def __init__(self, name: str, config: SystemConfig, drive: Drive, detector: Detector,
                 nominal: dict[str, str | None] | None = None) -> None:
        self.name = name
        self.config = config
        self.mapping = config.mapping
        self.drive = drive
        self.detector = detector
        self.nominal = nominal
        self.chunk = min(config.max_batch, drive.max_shots or config.max_batch)
        # x and theta are float32: their ranges are checked at the ends float32 holds
        self._input_range32 = float32_bounds(*self.mapping.input_range)
        self._param_range32 = float32_bounds(*self.mapping.param_range)

    @classmethod
    def from_config(cls, name: str, config: SystemConfig) -> PhysicalSystem:
        """The system, built and not opened; ``RigError`` lists every problem found."""
        problems = []
        try:
            nominal = nominal_spec(config)
        except PluginError as exc:
            nominal, problems = None, [f"nominal: {exc}"]
        try:
            drive, detector = build_rig(
                name, config.kind, config.mapping, config.physics, config.bench,
                config.drive.model_dump(), config.detector.model_dump())
        except RigError as exc:
            problems += exc.problems
        if problems:
            raise RigError(problems)
        return cls(name, config, drive, detector, nominal)

    @property
    def simulated(self) -> bool:
        return self.config.bench is not None

    def describe(self) -> dict[str, Any]:
        """The ``describe`` reply's ``system`` object (never any hidden parameter).

        ``nominal``: the nominal model (``model``: its name or class path, ``target``: the
        class, ``distribution``: the installed package it comes from) or null, for the trainer
        (``drivers.physics.nominal``)."""
        c, m = self.config, self.mapping
        return {
            "name": self.name, "kind": c.kind, "description": c.description,
            "input_dim": m.input_dim, "param_dim": m.param_dim, "output_dim": m.output_dim,
            "input_range": list(m.input_range), "param_range": list(m.param_range),
            "max_batch": c.max_batch, "simulated": self.simulated,
            "encoding": m.encoding.model_dump(), "decoding": m.decoding.model_dump(),
            "physics": dict(c.physics), "nominal": self.nominal,
            "instruments": {"drive": c.drive.driver, "detector": c.detector.driver},
        }

    def open(self) -> None:
        self.drive.open()
        self.detector.open()

    def close(self) -> None:
        for instrument in (self.detector, self.drive):
            # closing a broken instrument must not raise
            with contextlib.suppress(Exception):
                instrument.close()

    def check(self, x: np.ndarray, theta: np.ndarray) -> None:
        """Raise ``ProtocolError`` unless ``x`` and ``theta`` fit this system."""
        c = self.mapping
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != c.input_dim:
            raise ProtocolError(ErrorCode.BAD_ARRAY,
                                f"x must be float32 [B, {c.input_dim}] for system {self.name!r}, "
                                f"got {x.dtype.name} {list(x.shape)}")
        if x.shape[0] < 1:
            raise ProtocolError(ErrorCode.BAD_ARRAY, "x must hold at least one row (B >= 1)")
        good_theta = theta.dtype == np.float32 and (
            (theta.ndim == 1 and theta.shape[0] == c.param_dim)
            or (theta.ndim == 2 and theta.shape == (x.shape[0], c.param_dim)))
        if not good_theta:
            raise ProtocolError(ErrorCode.BAD_ARRAY,
                                f"theta must be float32 [{c.param_dim}] or [B={x.shape[0]}, "
                                f"{c.param_dim}] for system {self.name!r}, got "
                                f"{theta.dtype.name} {list(theta.shape)}")
        for label, a, (lo, hi) in (("x", x, self._input_range32),
                                   ("theta", theta, self._param_range32)):
            if a.size == 0:
                continue
            amin, amax = span(a)
            if amin != amin:  # NaN: an element is NaN or inf
                raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{label} contains NaN or inf")
            if amin < lo or amax > hi:
                raise ProtocolError(ErrorCode.OUT_OF_RANGE,
                                    f"{label} spans [{amin:g}, {amax:g}], outside the range "
                                    f"[{lo:g}, {hi:g}] of system {self.name!r}")

    def measure(self, x: np.ndarray, theta: np.ndarray,
                meanwhile: Callable[[], None] | None = None) -> tuple[np.ndarray, float]:
        """``y`` float32 [B, output_dim] and the instrument time (s) for a checked request.

        ``meanwhile``, if given, is called once while the instruments take the first chunk's
        shots (after ``drive.output``, before ``detector.read``): the worker answers the
        previous request then, instead of leaving the instrument idle. It is not called when
        ``arm`` or ``output`` fail."""
        batch = x.shape[0]
        if batch <= self.chunk:  # the common case: the decoded trace itself, no copy
            return self._measure_chunk(x, theta, meanwhile)
        y = np.empty((batch, self.mapping.output_dim), dtype=np.float32)
        spent = 0.0
        for start in range(0, batch, self.chunk):
            stop = min(start + self.chunk, batch)
            rows = theta[start:stop] if theta.ndim == 2 else theta
            y[start:stop], elapsed = self._measure_chunk(x[start:stop], rows, meanwhile)
            meanwhile = None
            spent += elapsed
        return y, spent

    def _measure_chunk(self, x: np.ndarray, theta: np.ndarray,
                       meanwhile: Callable[[], None] | None = None
                       ) -> tuple[np.ndarray, float]:
        """One instrument cycle (at most ``chunk`` rows): ``y`` and the instrument seconds."""
        patterns = self.mapping.encode(x, theta)
        began = time.perf_counter()
        with _driver_faults():
            self.detector.arm(x.shape[0])
            self.drive.output(patterns)
        if meanwhile is not None:
            meanwhile()
        with _driver_faults():
            trace = self.detector.read()
        spent = time.perf_counter() - began
        expected = (x.shape[0], self.detector.samples)
        if trace.shape != expected:
            raise SystemFault(f"{self.detector.name} returned shape {list(trace.shape)}, "
                              f"expected {list(expected)}", True)
        y = np.ascontiguousarray(self.mapping.decode(trace), dtype=np.float32)
        if math.isnan(span(y)[0]):  # NaN or inf in y (checked as sent: float32)
            raise SystemFault(f"{self.detector.name} returned non-finite values", True)
        return y, spent


@contextlib.contextmanager
def _driver_faults() -> Iterator[None]:
    """Turn whatever a driver raises into ``SystemFault`` (with its ``retryable``)."""
    try:
        yield
    except LimitError as exc:
        raise SystemFault(f"refused by the drive's safety limits: {exc}", False) from exc
    except InstrumentError as exc:
        raise SystemFault(str(exc), exc.retryable) from exc
    except Exception as exc:
        raise SystemFault(f"{type(exc).__name__} in driver: {exc}", True) from exc


def try_build(config: DaemonConfig) -> tuple[dict[str, PhysicalSystem], list[str]]:
    """The systems of ``config`` that build (not opened), and every problem of the others
    (``systems.NAME.TABLE: ...``)."""
    systems: dict[str, PhysicalSystem] = {}
    problems: list[str] = []
    for name, system in config.systems.items():
        try:
            systems[name] = PhysicalSystem.from_config(name, system)
        except RigError as exc:
            problems += [f"systems.{name}.{p}" for p in exc.problems]
    return systems, problems


def build_systems(config: DaemonConfig) -> dict[str, PhysicalSystem]:
    """Every system of ``config``, built and not opened; ``ConfigError`` lists every problem of
    every system, one per line."""
    systems, problems = try_build(config)
    if problems:
        raise ConfigError("\n  ".join(["the configuration's systems cannot be built:",
                                        *problems]))
    return systems
