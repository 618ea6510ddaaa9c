"""Nominal physics of the Duffing chain, for labd's trainer: the design's equations in torch.

``DuffingChainPhysics(mapping, physics)`` maps piezo drive patterns ``[B, channels]`` (volts,
one per DAC sample) to read-out traces ``[B, channels]`` (volts), differentiably: identical
resonators, identical links, a linear pick-off, no noise, no drift (``labd_duffing.chain``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drivers.physics.encoding import Mapping
from labd_duffing.chain import Chain, chain_params, integrate, nominal_chain


class DuffingChainPhysics(torch.nn.Module):
    def __init__(self, mapping: Mapping, physics: dict[str, Any]) -> None:
        super().__init__()
        chain = nominal_chain(chain_params(physics))
        self.chain = Chain(**{k: torch.as_tensor(v, dtype=torch.float32)
                              if isinstance(v, np.ndarray) else v
                              for k, v in vars(chain).items()})
        self.samples = mapping.channels

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        return integrate(patterns, self.chain, torch.stack)
