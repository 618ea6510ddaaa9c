"""Nominal physics of the oscillating plate: DAC -> amplifier and speaker -> plate modes -> sensor.

Model (SI units, one shot from rest): the DAC plays ``V[n]`` (volts) at ``sample_rate``, held
over each sample. The speaker turns it into a force through a first-order high-pass
(``highpass_hz``, the cone's low-frequency roll-off) and, on the real rig only, a soft
saturation. Each mode ``k`` obeys ``q'' + 2 zeta w q' + w^2 q + beta q^3 = b F`` (``beta = 0``
in the nominal model); the accelerometer reads ``gain * sum_k c_k q_k''`` (volts) once per
sample, at the instant the DAC updates.

Default plate: the 20 lowest modes of a simply supported rectangular plate (aspect 1.3,
fundamental 150 Hz, so 150 Hz .. 2.4 kHz), Rayleigh damping (3 % at 150 Hz, 0.6 % at 2.4 kHz),
couplings ``b_k``/``c_k`` the mode shapes at the speaker (0.31, 0.42) and the sensor
(0.67, 0.71), in plate units. ``physics`` may override ``freqs`` (Hz), ``zetas``,
``drive_coupling``, ``sensor_coupling`` (lists of equal length), ``sample_rate`` (Hz),
``highpass_hz`` (Hz) and ``gain`` (volts per unit modal acceleration).

Contract: ``PlatePhysics(mapping, physics)`` maps drive patterns ``[B, channels]`` (volts) to
sensor traces ``[B, samples]`` (volts), ``samples == channels``. The modal recursion
(``respond``, numba) is the exact zero-order-hold discretisation of each mode, with the cubic
force held over the sample; the simulated bench runs it on the real device. The nominal model is
linear and time-invariant, so it computes its impulse response once with that same recursion and
convolves in torch by FFT: exact, differentiable and about a millisecond per batch of 64.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import torch

from drivers.physics.encoding import Mapping


def _plate_modes(count: int = 20, f11: float = 150.0, aspect: float = 1.3,
                 speaker: tuple[float, float] = (0.31, 0.42),
                 sensor: tuple[float, float] = (0.67, 0.71)) -> dict[str, list[float]]:
    """The ``count`` lowest modes of a simply supported ``aspect`` x 1 plate."""
    orders = sorted(((m * m + (n * aspect) ** 2) / (1 + aspect ** 2), m, n)
                    for m in range(1, count + 1) for n in range(1, count + 1))[:count]
    freqs = [f11 * r for r, _, _ in orders]
    omega = 2 * np.pi * np.asarray(freqs)
    zetas = 56.5 / (2 * omega) + 5.3e-7 * omega / 2

    def shape(pos: tuple[float, float]) -> list[float]:
        return [float(np.sin(m * np.pi * pos[0]) * np.sin(n * np.pi * pos[1]))
                for _, m, n in orders]

    return {"freqs": freqs, "zetas": zetas.tolist(), "drive_coupling": shape(speaker),
            "sensor_coupling": shape(sensor)}


DEFAULTS: dict[str, Any] = {
    **_plate_modes(),
    "sample_rate": 48000.0,  # Hz
    "highpass_hz": 80.0,     # speaker roll-off corner, Hz
    "gain": 0.2,             # sensor volts per unit modal acceleration
}

_LISTS = ("freqs", "zetas", "drive_coupling", "sensor_coupling")


def plate_params(physics: dict[str, Any]) -> dict[str, Any]:
    """The nominal parameters: ``DEFAULTS`` overridden by ``physics``; unknown keys raise."""
    unknown = set(physics) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"plate physics: unknown parameters {sorted(unknown)}; "
                         f"known: {sorted(DEFAULTS)}")
    params = {**DEFAULTS, **physics}
    for key in _LISTS:
        params[key] = np.asarray(params[key], dtype=float)
    if len({params[key].shape for key in _LISTS}) != 1 or params["freqs"].ndim != 1:
        raise ValueError(f"plate physics: {', '.join(_LISTS)} must be lists of equal length")
    for key in ("sample_rate", "highpass_hz", "gain"):
        params[key] = float(params[key])
    if np.any(params["freqs"] >= params["sample_rate"] / 2):
        raise ValueError("plate physics: every mode must lie below the Nyquist frequency")
    if np.any(params["zetas"] <= 0) or np.any(params["zetas"] >= 1):
        raise ValueError("plate physics: damping ratios must lie in (0, 1)")
    return params


def mode_coefficients(freqs: np.ndarray, zetas: np.ndarray, dt: float) -> np.ndarray:
    """Per-mode zero-order-hold transition coefficients ``[..., 6]`` for ``respond``:
    ``phi11, phi12, phi21, phi22, w^2, 2 zeta w`` (underdamped modes, ``freqs`` in Hz)."""
    w = 2 * np.pi * freqs
    sigma = zetas * w
    wd = w * np.sqrt(1 - zetas ** 2)
    e, cs, sn = np.exp(-sigma * dt), np.cos(wd * dt), np.sin(wd * dt)
    return np.stack([e * (cs + sigma / wd * sn), e * sn / wd, -e * w * w / wd * sn,
                     e * (cs - sigma / wd * sn), w * w, 2 * sigma], axis=-1)


@numba.njit(cache=True, parallel=True, nogil=True)
def respond(force: np.ndarray, coef: np.ndarray, b: np.ndarray, c: np.ndarray,
            beta: np.ndarray) -> np.ndarray:
    """Modal acceleration ``sum_k c_k q_k''`` [B, T] under ``force`` [B, T] from rest.

    ``coef`` [B, K, 6] from ``mode_coefficients`` (per shot, so modes may drift between
    shots); ``b``, ``c``, ``beta`` [K]. The force and the cubic term are held over a sample.
    """
    out = np.empty(force.shape)
    for s in numba.prange(force.shape[0]):
        respond_shot(force[s], mode_table(coef[s], b, c, beta), out[s])
    return out


@numba.njit(cache=True, nogil=True)
def mode_table(coef: np.ndarray, b: np.ndarray, c: np.ndarray,
               beta: np.ndarray) -> np.ndarray:
    """One shot's modes as ``respond_shot`` reads them, [10, K]: ``phi11, phi12, phi21, phi22,
    w^2, 1 / w^2, 2 zeta w, b, c, beta`` from ``coef`` [K, 6] and ``b``, ``c``, ``beta`` [K]."""
    modes = b.shape[0]
    table = np.empty((10, modes))
    for k in range(modes):
        for j in range(5):
            table[j, k] = coef[k, j]
        table[5, k] = 1.0 / coef[k, 4]
        table[6, k] = coef[k, 5]
        table[7, k] = b[k]
        table[8, k] = c[k]
        table[9, k] = beta[k]
    return table


@numba.njit(cache=True, nogil=True)
def respond_shot(force: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """``respond`` of one shot: the modal acceleration under ``force`` [T] into ``out`` [T],
    the modes from ``mode_table``.

    The modes advance in one loop without a running sum, which the compiler vectorises (4
    modes per instruction); their accelerations are then summed in mode order, so every
    result is the plain per-mode loop's to the bit.
    """
    modes = table.shape[1]
    state = np.zeros((2, modes))  # q, q'
    term = np.empty(modes)
    for n in range(force.shape[0]):
        u = force[n]
        for k in range(modes):
            qk = state[0, k]
            pk = state[1, k]
            f = table[7, k] * u - table[9, k] * qk * qk * qk
            term[k] = table[8, k] * (f - table[6, k] * pk - table[4, k] * qk)
            rest = f * table[5, k]
            dq = qk - rest
            state[0, k] = rest + table[0, k] * dq + table[1, k] * pk
            state[1, k] = table[2, k] * dq + table[3, k] * pk
        acc = 0.0
        for k in range(modes):
            acc += term[k]
        out[n] = acc


@numba.njit(cache=True, nogil=True)
def highpass(drive: np.ndarray, alpha: float) -> np.ndarray:
    """First-order high-pass ``y[n] = alpha (y[n-1] + x[n] - x[n-1])`` from rest, [B, T]."""
    out = np.empty_like(drive)
    for s in range(drive.shape[0]):
        highpass_shot(drive[s], alpha, out[s])
    return out


@numba.njit(cache=True, nogil=True)
def highpass_shot(drive: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """``highpass`` of one shot, ``drive`` [T] into ``out`` [T] (which may be ``drive``)."""
    y = 0.0
    prev = 0.0
    for n in range(drive.shape[0]):
        x = drive[n]
        y = alpha * (y + x - prev)
        prev = x
        out[n] = y


def highpass_alpha(corner_hz: float, sample_rate: float) -> float:
    rc = 1 / (2 * math.pi * corner_hz)
    return rc / (rc + 1 / sample_rate)


def impulse_response(params: dict[str, Any], samples: int) -> np.ndarray:
    """The nominal plate's response [samples] (volts) to one sample of 1 V."""
    pulse = np.zeros((1, samples))
    pulse[0, 0] = 1.0
    force = highpass(pulse, highpass_alpha(params["highpass_hz"], params["sample_rate"]))
    coef = mode_coefficients(params["freqs"], params["zetas"], 1 / params["sample_rate"])
    modes = len(params["freqs"])
    return params["gain"] * respond(force, coef[None], params["drive_coupling"],
                                    params["sensor_coupling"], np.zeros(modes))[0]


class PlatePhysics(torch.nn.Module):
    def __init__(self, mapping: Mapping, physics: dict[str, Any]) -> None:
        super().__init__()
        self.params = plate_params(physics)
        self.samples = mapping.channels
        self.nfft = 1 << (2 * self.samples - 1).bit_length()
        h = torch.from_numpy(impulse_response(self.params, self.samples))
        self.register_buffer("transfer", torch.fft.rfft(h, n=self.nfft), persistent=False)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft(patterns.double(), n=self.nfft) * self.transfer
        return torch.fft.irfft(spectrum, n=self.nfft)[:, :self.samples].to(patterns.dtype)
