"""Nominal physics of the loopback (DAC wired to ADC): the trace is ``gain * drive + offset``."""

from __future__ import annotations

from typing import Any

import torch

from drivers.physics.encoding import Mapping


class LoopbackPhysics(torch.nn.Module):
    def __init__(self, mapping: Mapping, physics: dict[str, Any]) -> None:
        super().__init__()
        self.gain = float(physics.get("gain", 1.0))
        self.offset = float(physics.get("offset", 0.0))
        self.samples = mapping.channels

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        return patterns * self.gain + self.offset
