"""Nominal (textbook) models of the physical systems, as differentiable torch modules.

``nominal_model(description)`` builds, from what the daemon's ``describe`` tells of a system,
the module ``y = decode(physics(encode(x, theta)))``: the same encoding and decoding the daemon
applies, around the system's textbook physics with no imperfections and no noise. The trainer
uses it for in-silico training and as the physics prior of a digital twin; it needs no
instrument code and no hidden parameter.

The physics is the class the description's ``nominal`` names (``model``: a name registered in
the ``labd.physics`` entry-point group, or ``"package.module:Class"``; see ``drivers.plugins``):
a ``torch.nn.Module`` constructed as ``cls(mapping, physics)`` (``physics``: the system's
nominal parameters), mapping drive patterns ``[B, channels]`` to detector traces
``[B, samples]``. A system whose ``nominal`` is null has no nominal model: ``NoNominalModel``.
"""

from __future__ import annotations

from typing import Any

import torch

from drivers import plugins
from drivers.physics.encoding import Mapping
from drivers.plugins import PluginError


class NoNominalModel(Exception):
    """The system has no nominal model (its ``describe`` says ``nominal: null``)."""


def mapping_of(description: dict[str, Any]) -> Mapping:
    """The system's ``Mapping`` (dimensions, ranges, encoding, decoding) from ``describe``."""
    return Mapping.from_table(description)


class NominalModel(torch.nn.Module):
    """``y = decode(physics(encode(x, theta)))`` for one system; float32 in, float32 out."""

    def __init__(self, mapping: Mapping, physics: torch.nn.Module) -> None:
        super().__init__()
        self.mapping = mapping
        self.physics = physics

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        patterns = self.mapping.encode(x, theta)
        return self.mapping.decode(self.physics(patterns))


def build_physics(name: str, mapping: Mapping, physics: dict[str, Any]) -> torch.nn.Module:
    """The physics module ``name`` names, checked (a ``torch.nn.Module`` taking
    ``(mapping, physics)``) and made; ``PluginError`` says what is wrong."""
    label = f"nominal model {name!r}"
    cls = plugins.load("physics", name)
    plugins.check_class(cls, torch.nn.Module, label)
    kwargs = {"mapping": mapping, "physics": dict(physics)}
    plugins.check_call(cls, kwargs, label, kwargs)
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise PluginError(f"{label} ({cls.__module__}:{cls.__qualname__}) failed on this "
                          f"system's mapping and physics: {type(exc).__name__}: {exc}") from exc


def nominal_model(description: dict[str, Any]) -> NominalModel:
    """The nominal model of the system that ``describe`` described; ``NoNominalModel`` when it
    has none, ``PluginError`` when its class cannot be loaded here."""
    spec = description.get("nominal")
    system = description.get("name", "?")
    if not spec:
        raise NoNominalModel(
            f"system {system!r} (kind {description.get('kind')!r}) has no nominal model: its "
            f"configuration names none and no physics model is registered for its kind. Use a "
            f"twin fitted from measurements, or give the system one (nominal = \"name\" or "
            f"\"package.module:Class\"; see docs/plugins.md)")
    mapping = mapping_of(description)
    try:
        physics = build_physics(spec["model"], mapping, description.get("physics", {}))
    except PluginError as exc:
        origin = spec.get("distribution") or "a class path"
        raise PluginError(f"system {system!r}: {exc}. (The daemon loads {spec['target']!r} "
                          f"from {origin}: install the same package here.)") from None
    return NominalModel(mapping, physics)
