"""Helpers of the vendor-library tests: emulated hardware in this process, with the fake
``nidaqmx``, ``sounddevice`` and ``seabreeze`` importable in place of the real packages."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from configured import ConfiguredSystem, configured

from drivers.emulators.bus import ENV, Bus, serve
from drivers.emulators.hardware import Clock
from drivers.emulators.hardware_server import build
from drivers.emulators.rehearse import VENDOR
from drivers.emulators.rig import load_rig
from drivers.physics.nominal import nominal_model

EXAMPLES = Path(__file__).parents[2] / "examples"
LIBRARIES = ("nidaqmx", "sounddevice", "seabreeze")


def _library_modules() -> dict[str, Any]:
    return {k: v for k, v in sys.modules.items() if k.split(".")[0] in LIBRARIES}


@contextlib.contextmanager
def fakes_imported() -> Iterator[None]:
    """``import nidaqmx`` (etc.) finds the fakes for the duration; the real packages (if
    installed) come back afterwards."""
    saved = _library_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(VENDOR))
    try:
        yield
    finally:
        sys.path.remove(str(VENDOR))
        for name in _library_modules():
            del sys.modules[name]
        sys.modules.update(saved)


@contextlib.contextmanager
def emulated(config: str | Path, system: str, speed: float = 50.0,
             seed: int = 0) -> Iterator[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """The rig's emulated hardware on a bus in this process: ``(rig, devices, ptys)``."""
    rig = load_rig(system, config, seed=seed)
    devices, ptys = build(rig, Clock(speed))
    listener = serve(devices)
    previous = os.environ.get(ENV)
    os.environ[ENV] = listener.address
    Bus._shared = None
    try:
        with fakes_imported():
            yield rig, devices, ptys
    finally:
        if Bus._shared is not None:
            Bus._shared.conn.close()
        Bus._shared = None
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        listener.close()
        for pty in ptys.values():
            pty.close()


def system_of(config: str | Path, name: str) -> ConfiguredSystem:
    return configured(config, name)


def nominal_y(description: dict[str, Any], x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The nominal model's ``y`` for a system as the daemon describes it."""
    with torch.no_grad():
        return nominal_model(description)(torch.from_numpy(x), torch.from_numpy(theta)).numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
