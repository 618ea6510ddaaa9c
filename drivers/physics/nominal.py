"""Nominal (textbook) models of the physical systems, as differentiable torch modules.

``nominal_model(description)`` builds, from what the daemon's ``describe`` tells of a system,
the module ``y = decode(physics(encode(x, theta)))``: the same encoding and decoding the daemon
applies, around the kind's textbook physics with no imperfections and no noise. The trainer
uses it for in-silico training and as the physics prior of a digital twin; it needs no
instrument code and no hidden parameter.

Each kind's physics is a ``torch.nn.Module`` class registered in ``PHYSICS``, constructed as
``cls(mapping, physics)`` and mapping drive patterns ``[B, channels]`` to detector traces
``[B, samples]``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from drivers.physics.encoding import Mapping

#: System kind -> "module:Class" of its nominal physics.
PHYSICS: dict[str, str] = {
    "loopback": "drivers.physics.loopback:LoopbackPhysics",
    "shg": "drivers.physics.shg:ShgPhysics",
    "plate": "drivers.physics.plate:PlatePhysics",
    "oscillator": "drivers.physics.oscillator:OscillatorPhysics",
}


def mapping_of(description: dict[str, Any]) -> Mapping:
    """The system's ``Mapping`` (dimensions, ranges, encoding, decoding) from ``describe``."""
    return Mapping.model_validate({k: description[k] for k in Mapping.model_fields
                                   if k in description})


class NominalModel(torch.nn.Module):
    """``y = decode(physics(encode(x, theta)))`` for one system; float32 in, float32 out."""

    def __init__(self, mapping: Mapping, physics: torch.nn.Module) -> None:
        super().__init__()
        self.mapping = mapping
        self.physics = physics

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        patterns = self.mapping.encode(x, theta)
        return self.mapping.decode(self.physics(patterns))


def nominal_model(description: dict[str, Any]) -> NominalModel:
    """The nominal model of the system that ``describe`` described."""
    kind = description["kind"]
    try:
        target = PHYSICS[kind]
    except KeyError:
        raise KeyError(f"no nominal model for kind {kind!r}; known: {sorted(PHYSICS)}") from None
    module, _, attr = target.partition(":")
    mapping = mapping_of(description)
    physics_cls = getattr(importlib.import_module(module), attr)
    return NominalModel(mapping, physics_cls(mapping, dict(description.get("physics", {}))))
