"""Shared helpers of the simulated-system tests, as fixtures.

Reality gap, as reported by these tests: on a batch of inputs, with ``y_sim`` the stand-in's
noiseless outputs and ``y_nom`` the nominal model's,
``gap = ||y_sim - y_nom|| / ||y_sim||`` (Frobenius norms over batch and output bins).
``spread_gap`` divides instead by ``||y_sim - mean_batch(y_sim)||``: the error relative to the
input-dependent part of the output, which is what a classifier uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from configured import ConfiguredSystem, configured

from drivers import plugins
from drivers.physics.nominal import nominal_model
from drivers.rig import build_rig


def _gap(y_sim: np.ndarray, y_nom: np.ndarray) -> float:
    return float(np.linalg.norm(y_sim - y_nom) / np.linalg.norm(y_sim))


def _spread_gap(y_sim: np.ndarray, y_nom: np.ndarray) -> float:
    return float(np.linalg.norm(y_sim - y_nom) / np.linalg.norm(y_sim - y_sim.mean(0)))


@pytest.fixture
def sim_gaps() -> tuple[Callable[..., float], Callable[..., float]]:
    return _gap, _spread_gap


@pytest.fixture
def sim_system() -> Callable[[str], ConfiguredSystem]:
    return lambda name: configured(None, name)


def _rig(system: ConfiguredSystem, name: str, **bench: Any) -> tuple[Any, Any]:
    drive, detector = build_rig(name, system.kind, system.mapping, system.physics,
                                {**(system.bench or {}), **bench},
                                {"driver": system.drive.driver, **system.drive.options},
                                {"driver": system.detector.driver, **system.detector.options})
    drive.open()
    detector.open()
    return drive, detector


def _measure(rig: tuple[Any, Any], patterns: np.ndarray) -> np.ndarray:
    drive, detector = rig
    detector.arm(patterns.shape[0])
    drive.output(patterns)
    return detector.read()


@pytest.fixture
def sim_rig() -> Callable[..., tuple[Any, Any]]:
    """``sim_rig(system, name, **bench_overrides)``: an opened (drive, detector) pair."""
    return _rig


@pytest.fixture
def sim_measure() -> Callable[[tuple[Any, Any], np.ndarray], np.ndarray]:
    """``sim_measure(rig, patterns)``: arm, output, read."""
    return _measure


def describe(system: ConfiguredSystem) -> dict[str, Any]:
    """What the daemon's ``describe`` tells the trainer of a system (no hidden parameters)."""
    return {"kind": system.kind, "physics": system.physics,
            "nominal": plugins.spec("physics", system.kind), **system.mapping.model_dump()}


@pytest.fixture
def sim_nominal() -> Callable[[ConfiguredSystem, np.ndarray, np.ndarray], np.ndarray]:
    """``sim_nominal(system, x, theta)``: the nominal model's y, as numpy."""

    def run(system: ConfiguredSystem, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        model = nominal_model(describe(system))
        with torch.no_grad():
            return model(torch.from_numpy(x), torch.from_numpy(theta)).numpy()

    return run


@pytest.fixture
def sim_throughput() -> Callable[[tuple[Any, Any], np.ndarray, int], float]:
    """``sim_throughput(rig, patterns, repeats)``: best shots/s over ``repeats`` measurements."""

    def run(rig: tuple[Any, Any], patterns: np.ndarray, repeats: int = 3) -> float:
        _measure(rig, patterns)  # warm up (numba cache load)
        best = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            _measure(rig, patterns)
            best = max(best, patterns.shape[0] / (time.perf_counter() - started))
        return best

    return run
