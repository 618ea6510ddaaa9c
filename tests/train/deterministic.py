"""A deterministic stand-in for the pipeline's tests: the SHG nominal model without noise behind
the client interface, answering in order, and the SHG vowel network on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drivers.physics.nominal import nominal_model
from labd.client import ForwardResult
from labd.config import load_config
from labd.daemon.system import PhysicalSystem
from labd.train.arch import build_network, default_arch
from labd.train.datasets import Dataset, load_task
from labd.train.hardware import Hardware
from labd.train.layers import PhysicalNetwork


class Deterministic:
    """A client whose 'hardware' is the nominal model without noise, answering in order."""

    def __init__(self, description: dict[str, Any]) -> None:
        self.description = description
        self.model = nominal_model(description)
        self.pending: dict[str, np.ndarray] = {}

    def describe(self, system: str) -> dict[str, Any]:
        return self.description

    def forward(self, system: str, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x), torch.from_numpy(theta)).numpy()

    def submit(self, system: str, x: np.ndarray, theta: np.ndarray) -> str:
        rid = str(len(self.pending))
        self.pending[rid] = self.forward(system, x, theta)
        return rid

    def result(self, rid: str, retry: bool = False) -> ForwardResult:
        return ForwardResult(y=self.pending[rid], seq=0, elapsed_s=0.001)


def vowel_network(**overrides: Any) -> tuple[PhysicalNetwork, Dataset]:
    """The SHG vowel design (``overrides`` of its ``Arch``) on the deterministic stand-in,
    initialised, and its data."""
    torch.set_num_threads(1)
    description = PhysicalSystem.from_config("shg", load_config().systems["shg"]).describe()
    data = load_task("vowels", None, None)
    arch = default_arch("vowels", "shg", **overrides)
    hw = Hardware(Deterministic(description), "shg")
    net = build_network(arch, data.n_features, data.n_classes,
                        [(description, nominal_model(description), hw)] * arch.depth, seed=3)
    with torch.no_grad():
        net.initialise(torch.from_numpy(data.x_train[:64]))
    return net, data
