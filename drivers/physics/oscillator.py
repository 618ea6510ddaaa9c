"""Nominal physics of the nonlinear analog oscillator: a series RLC tank clamped by a junction.

Circuit (SI units): the DAC voltage ``V(t)`` drives ``L di/dt = V - R i - v`` and
``C dv/dt = i - I_s (exp(v / (n V_T)) - 1)``; the ADC reads ``adc_gain * v`` once per DAC sample.
With the defaults (R = 100 ohm, L = 1 mH, C = 10 nF) the tank resonates at
``1 / (2 pi sqrt(LC)) = 50.3 kHz`` with Q = 3.2; the junction (I_s = 10 fA, n = 1.2) conducts
from about 0.6 V, so small drives answer linearly and large ones are clipped (harmonics).

Contract: ``OscillatorPhysics(mapping, physics)`` maps drive patterns ``[B, channels]`` (volts,
one value per DAC sample at ``sample_rate``) to ADC traces ``[B, samples]`` (volts), with
``samples == channels``; differentiable with respect to the patterns.

Integrator (shared with the simulated bench, ``integrate``): the drive is held over each DAC
sample (zero-order hold) and split into ``substeps`` steps of ``dt = 1 / (sample_rate *
substeps)``: the current is updated implicitly in ``R``, then the voltage with the new current
and a linearly implicit (Rosenbrock-Euler) junction term, which stays stable however stiff the
exponential gets. The ADC sample ``n`` is ``v`` at the end of DAC sample ``n``. Gradients come
from the exact discrete adjoint of that integrator (``adjoint``), compiled with numba like the
forward pass, so training on the nominal model costs about two forward passes.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch

from drivers.physics.encoding import Mapping

#: Boltzmann constant over the electron charge (V/K).
K_OVER_Q = 8.617333262e-5

DEFAULTS: dict[str, float] = {
    "R": 100.0,            # ohm
    "L": 1.0e-3,           # henry
    "C": 10.0e-9,          # farad
    "I_s": 1.0e-14,        # A, junction saturation current
    "n": 1.2,              # junction ideality factor
    "temperature": 300.0,  # K
    "sample_rate": 1.0e6,  # DAC and ADC samples per second
    "substeps": 10,        # integration steps per DAC sample
    "adc_gain": 1.0,       # ADC reading per volt across the capacitor
}

_EXP_CAP = 80.0  # the exponent never gets near this in practice; the cap only guards overflow


def oscillator_params(physics: dict[str, Any]) -> dict[str, float]:
    """The nominal parameters: ``DEFAULTS`` overridden by ``physics``; unknown keys raise."""
    unknown = set(physics) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"oscillator physics: unknown parameters {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **{k: float(v) for k, v in physics.items()}}
    params["substeps"] = int(params["substeps"])
    for key, value in params.items():
        if not value > 0:
            raise ValueError(f"oscillator physics: {key} must be positive, got {value}")
    return params


@numba.njit(cache=True, inline="always")
def _substep(i: float, v: float, drive: float, a: float, kappa: float, b: float, i_s: float,
             nvt: float) -> tuple[float, float]:
    i1 = kappa * (i + a * (drive - v))
    e = math.exp(min(v / nvt, _EXP_CAP))
    v1 = v + b * (i1 - i_s * (e - 1.0)) / (1.0 + b * i_s * e / nvt)
    return i1, v1


#: Shots that ``integrate`` advances together on one thread: each step waits for the
#: previous one (an exponential and two divisions, ~30 ns), so interleaving independent shots
#: lets the CPU overlap them (2.7x at 4; 8 gains nothing more).
LANES = 4


@numba.njit(cache=True, parallel=True, nogil=True)
def integrate(drive: np.ndarray, r: np.ndarray, ell: np.ndarray, c: np.ndarray,
              i_s: np.ndarray, nvt: np.ndarray, dt: float, substeps: int,
              states: np.ndarray) -> np.ndarray:
    """Capacitor voltage [B, T] at the end of each DAC sample of ``drive`` [B, T] (volts).

    Component values are per shot ([B] arrays). If ``states`` has shape [2, B, T * substeps
    + 1] the current and voltage before every step are stored there (for ``adjoint``);
    pass an empty array otherwise. Shots run in groups of ``LANES`` (a short last group
    repeats its first shot in the spare lanes, whose results are dropped); each shot's
    arithmetic is that of a shot alone, to the bit.
    """
    batch, samples = drive.shape
    keep = states.shape[0] == 2
    out = np.empty((batch, samples))
    for g in numba.prange((batch + LANES - 1) // LANES):
        first = g * LANES
        used = min(LANES, batch - first)
        lane = np.empty((5, LANES))  # a, kappa, b, I_s, n V_T per lane
        u = np.empty((samples, LANES))  # the lanes' drives, side by side
        for j in range(LANES):
            s = first + (j if j < used else 0)
            lane[0, j] = dt / ell[s]
            lane[1, j] = 1.0 / (1.0 + dt * r[s] / ell[s])
            lane[2, j] = dt / c[s]
            lane[3, j] = i_s[s]
            lane[4, j] = nvt[s]
            for n in range(samples):
                u[n, j] = drive[s, n]
        i = np.zeros(LANES)
        v = np.zeros(LANES)
        for n in range(samples):
            for k in range(substeps):
                if keep:
                    for j in range(used):
                        states[0, first + j, n * substeps + k] = i[j]
                        states[1, first + j, n * substeps + k] = v[j]
                for j in range(LANES):
                    i[j], v[j] = _substep(i[j], v[j], u[n, j], lane[0, j], lane[1, j],
                                          lane[2, j], lane[3, j], lane[4, j])
            for j in range(used):
                out[first + j, n] = v[j]
        if keep:
            for j in range(used):
                states[0, first + j, samples * substeps] = i[j]
                states[1, first + j, samples * substeps] = v[j]
    return out


@numba.njit(cache=True, parallel=True, nogil=True)
def adjoint(grad_out: np.ndarray, states: np.ndarray, r: np.ndarray, ell: np.ndarray,
            c: np.ndarray, i_s: np.ndarray, nvt: np.ndarray, dt: float,
            substeps: int) -> np.ndarray:
    """Gradient with respect to the drive [B, T] of ``sum(grad_out * integrate(drive))``."""
    batch, samples = grad_out.shape
    grad_drive = np.empty((batch, samples))
    for s in numba.prange(batch):
        a = dt / ell[s]
        kappa = 1.0 / (1.0 + dt * r[s] / ell[s])
        b = dt / c[s]
        lam_i = 0.0
        lam_v = 0.0
        for n in range(samples - 1, -1, -1):
            lam_v += grad_out[s, n]
            g_drive = 0.0
            for k in range(substeps - 1, -1, -1):
                step = n * substeps + k
                v = states[1, s, step]
                i1 = states[0, s, step + 1]
                e = math.exp(min(v / nvt[s], _EXP_CAP))
                g = i_s[s] * e / nvt[s]
                den = 1.0 + b * g
                num = i1 - i_s[s] * (e - 1.0)
                mu = lam_i + lam_v * b / den
                dv_dv = 1.0 + b * (-g * den - num * b * g / nvt[s]) / (den * den)
                lam_i = mu * kappa
                lam_v = lam_v * dv_dv - mu * kappa * a
                g_drive += mu * kappa * a
            grad_drive[s, n] = g_drive
    return grad_drive


def circuit_arrays(params: dict[str, float], batch: int) -> dict[str, np.ndarray]:
    """Per-shot component arrays (the nominal values repeated ``batch`` times)."""
    nvt = params["n"] * K_OVER_Q * params["temperature"]
    return {"r": np.full(batch, params["R"]), "ell": np.full(batch, params["L"]),
            "c": np.full(batch, params["C"]), "i_s": np.full(batch, params["I_s"]),
            "nvt": np.full(batch, nvt)}


class _Circuit(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, drive: torch.Tensor, params: dict[str, float]) -> torch.Tensor:
        d = drive.detach().cpu().double().numpy()
        arrays = circuit_arrays(params, d.shape[0])
        dt = 1.0 / (params["sample_rate"] * params["substeps"])
        steps = params["substeps"]
        shape = (2, d.shape[0], d.shape[1] * steps + 1) if ctx.needs_input_grad[0] else (0, 0, 0)
        states = np.empty(shape)
        out = integrate(d, dt=dt, substeps=steps, states=states, **arrays)
        ctx.saved = (states, arrays, dt, steps)
        return torch.from_numpy(out).to(drive.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        states, arrays, dt, steps = ctx.saved
        g = adjoint(grad.detach().cpu().double().numpy(), states, dt=dt, substeps=steps,
                    **arrays)
        return torch.from_numpy(g).to(grad.dtype), None


class OscillatorPhysics(torch.nn.Module):
    def __init__(self, mapping: Mapping, physics: dict[str, Any]) -> None:
        super().__init__()
        self.params = oscillator_params(physics)
        self.samples = mapping.channels

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        return _Circuit.apply(patterns, self.params) * self.params["adc_gain"]
