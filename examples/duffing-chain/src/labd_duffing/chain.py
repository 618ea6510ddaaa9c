"""A chain of coupled Duffing resonators: the equations, the nominal parameters, one integrator.

``N`` resonators in a row (MEMS beams or macroscopic cantilevers coupled by springs). In time
``tau = w0 t`` (``w0 = 2 pi f0``) and with displacements ``q_i`` in units of the capacitive
gap, resonator ``i`` obeys::

    q_i'' = -r_i^2 q_i - (r_i / Q_i) q_i' - beta_i r_i^2 q_i^3 - sum_j K_ij q_j + [i = 0] g V(tau)

``r_i = f_i / f0`` (the resonator's frequency ratio), ``Q_i`` its quality factor, ``beta_i`` its
hardening (Duffing) coefficient, ``K`` the coupling Laplacian (``k_l`` per link between
neighbours, free ends) and ``g`` the piezo stack's push per volt on the first resonator (a static
volt displaces it by ``g`` gaps). A capacitive pick-off reads the last resonator as
``gain * q / (1 - eta q)`` volts (a parallel-plate capacitance; the nominal model takes
``eta = 0``, a linear read-out).

The DAC holds each drive value for one sample (``1 / sample_rate`` s) and the ADC samples the
read-out at the end of each; ``integrate`` takes ``substeps`` symplectic-Euler steps per sample.
It works on numpy arrays (the simulated bench) and on torch tensors (the nominal model,
differentiable) alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Nominal parameters, overridden by a system's ``physics`` table.
DEFAULTS: dict[str, float] = {
    "resonators": 4,         # resonators in the chain
    "f0": 20e3,              # Hz, every resonator's design frequency
    "sample_rate": 200e3,    # DAC and ADC samples per second
    "q_factor": 10.0,        # quality factor of each resonator
    "coupling": 0.5,         # spring between neighbours, in units of a resonator's stiffness
    "beta": 2.0,             # Duffing coefficient: cubic stiffness over linear, per gap^2
    "piezo_gain": 0.1,       # gaps of static displacement per volt on the piezo stack
    "readout_gain": 1.0,     # ADC volts per gap of the last resonator's displacement
    "substeps": 2,           # integration steps per DAC sample
}


def chain_params(physics: dict[str, Any]) -> dict[str, float]:
    """``DEFAULTS`` overridden by ``physics``; unknown or non-positive values raise."""
    unknown = set(physics) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"duffing_chain physics: unknown parameters {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **{k: float(v) for k, v in physics.items()}}
    for key, value in params.items():
        if not value > 0:
            raise ValueError(f"duffing_chain physics: {key} must be positive, got {value}")
    params["resonators"], params["substeps"] = int(params["resonators"]), int(params["substeps"])
    return params


@dataclass
class Chain:
    """One chain's constants as arrays (numpy or torch): per resonator ``r2`` (``r_i^2``),
    ``damping`` (``r_i / Q_i``) and ``cubic`` (``beta_i r_i^2``); ``K`` ``[N, N]``; the piezo's
    ``push`` as a row ``[N]`` (``g`` on the first resonator); the read-out ``gain`` and
    ``eta``; ``step``, the integration step in units of ``1 / w0``."""

    r2: Any
    damping: Any
    cubic: Any
    K: Any
    push: Any
    gain: float
    eta: float
    step: float
    substeps: int


def chain_of(params: dict[str, float], ratio: np.ndarray, q: np.ndarray, beta: np.ndarray,
             links: np.ndarray, g: float, gain: float, eta: float) -> Chain:
    """The ``Chain`` (numpy, float64) of resonators with frequency ratios ``ratio``, quality
    factors ``q``, Duffing coefficients ``beta``, link springs ``links`` ``[N - 1]``."""
    n = len(ratio)
    K = np.zeros((n, n))
    for i, k in enumerate(links):
        K[i, i] += k
        K[i + 1, i + 1] += k
        K[i, i + 1] -= k
        K[i + 1, i] -= k
    push = np.zeros(n)
    push[0] = g
    substeps = params["substeps"]
    step = 2 * math.pi * params["f0"] / (params["sample_rate"] * substeps)
    return Chain(ratio ** 2, ratio / q, beta * ratio ** 2, K, push, gain, eta, step, substeps)


def nominal_chain(params: dict[str, float]) -> Chain:
    """The design: identical resonators, identical links, a linear read-out."""
    n = params["resonators"]
    ones = np.ones(n)
    return chain_of(params, ones, params["q_factor"] * ones, params["beta"] * ones,
                    params["coupling"] * np.ones(n - 1), params["piezo_gain"],
                    params["readout_gain"], 0.0)


def integrate(drive: Any, chain: Chain, stack: Callable[..., Any]) -> Any:
    """The ADC trace ``[B, T]`` (volts) of the DAC drive ``[B, T]`` (volts), from rest.

    ``drive`` and the chain's arrays are all numpy or all torch; ``stack`` is ``np.stack`` or
    ``torch.stack``. Each step: the acceleration at the current state, then the velocity, then
    the displacement with the new velocity (symplectic Euler)."""
    h = chain.step
    q = drive[:, :1] * chain.push * 0.0  # zeros [B, N] of the drive's kind, dtype and device
    v = q
    reads = []
    for n in range(drive.shape[1]):
        force = drive[:, n:n + 1] * chain.push
        for _ in range(chain.substeps):
            a = force - chain.r2 * q - chain.damping * v - chain.cubic * q * q * q - q @ chain.K
            v = v + h * a
            q = q + h * v
        last = q[:, -1]
        reads.append(chain.gain * last / (1 - chain.eta * last) if chain.eta else
                     chain.gain * last)
    return stack(reads, 1)
