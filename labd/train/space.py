"""The design space ``labd tune`` searches, and its bounds; free of torch, because the command
line reads it to build every ``labd`` command's arguments."""

from __future__ import annotations

from typing import Any

#: The most physical units (copies of the system side by side) of one layer.
MAX_UNITS = 8

#: key -> (kind, arguments): ``int`` (low, high), ``log`` (low, high: log-uniform float),
#: ``choice`` (the choices)
SPACE: dict[str, tuple[str, Any]] = {
    "depth": ("int", (1, 2)),
    "units": ("int", (1, MAX_UNITS)),
    "hybrid": ("choice", (True, False)),
    "readout": ("choice", ("linear", "groups")),
    "lr": ("log", (3e-3, 0.1)),
    "lr_digital": ("log", (1e-3, 0.05)),
    "batch_size": ("choice", (16, 32, 64, 128)),
    "scaling": ("choice", ("standard", "minmax")),
}
