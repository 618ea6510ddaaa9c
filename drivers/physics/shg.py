"""Nominal physics of broadband second-harmonic generation (SHG) behind a pulse shaper.

Model: the shaper sets the transmission ``t(c_k)`` of each of its ``P = channels`` spectral
channels (``c`` in [0, 1]; nominally ``t(c) = c``). The fundamental field is
``A_k = A0_k t(c_k) exp(i phi_k)`` with a Gaussian source spectrum
``A0_k = exp(-((k / (P - 1) - centre) / width)^2 / 2)`` (nominally ``phi = 0``). The
second-harmonic field is the self-convolution ``B_m = sum_j A_j A_(m-j)``, ``m = 0 .. 2P - 2``,
times the phase-matching amplitude ``sinc((m / (2P - 2) - centre) / phase_matching)`` (the
crystal is tuned to double the spectrum's centre, which lands at the same fraction ``centre``
of the SH band). The spectrometer's ``pixels`` pixels tile a ``window`` of the SH band centred
there (the bright part: the SH of a Gaussian is a Gaussian sqrt(2) narrower), each
integrating ``|B_m|^2`` over the part of the band it covers; the whole is scaled so that the
brightest pixel reads ``full_counts`` counts when every channel is fully open. The trace is
``[B, pixels]`` in counts.

Parameters (``physics`` overrides ``DEFAULTS``): ``centre`` and ``width`` (fractions of the
shaper span), ``phase_matching`` and ``window`` (fractions of the SH span), ``pixels``
(default ``2P - 1``), ``full_counts`` (counts).

Contract: ``ShgPhysics(mapping, physics)`` maps patterns ``[B, channels]`` (mask transmission)
to spectra ``[B, pixels]`` (counts), differentiably. ``sh_counts`` is the physics both this
model and the simulated bench (``drivers.sim.shg``) evaluate: the bench feeds it its hidden
shaper response, spectral phase, laser power and detector response.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from drivers.physics.encoding import Mapping

DEFAULTS: dict[str, float] = {
    "centre": 0.3,          # source spectrum centre, fraction of the shaper span
    "width": 0.35,          # source amplitude spectrum RMS width, fraction of the shaper span
    "phase_matching": 1.0,  # sinc width of the phase-matching amplitude, fraction of SH span
    "window": 0.5,          # central part of the SH band the spectrometer covers, fraction
    "full_counts": 40000.0,  # counts of the brightest pixel with every channel open
}


def shg_params(physics: dict[str, Any], channels: int) -> dict[str, Any]:
    """The nominal parameters: ``DEFAULTS`` plus ``pixels``, overridden by ``physics``."""
    known = {*DEFAULTS, "pixels"}
    unknown = set(physics) - known
    if unknown:
        raise ValueError(f"shg physics: unknown parameters {sorted(unknown)}; "
                         f"known: {sorted(known)}")
    params: dict[str, Any] = {**DEFAULTS, "pixels": 2 * channels - 1}
    params.update(physics)
    params["pixels"] = int(params["pixels"])
    for key in DEFAULTS:
        params[key] = float(params[key])
        if key != "centre" and not params[key] > 0:
            raise ValueError(f"shg physics: {key} must be positive, got {params[key]}")
    if params["pixels"] < 1:
        raise ValueError("shg physics: pixels must be positive")
    return params


def source_spectrum(channels: int, centre: float, width: float) -> np.ndarray:
    """Gaussian amplitude ``A0`` [channels] of the laser over the shaper channels."""
    k = np.arange(channels) / max(channels - 1, 1)
    return np.exp(-(((k - centre) / width) ** 2) / 2)


def phase_matching(channels: int, centre: float, width: float) -> np.ndarray:
    """Phase-matching amplitude [2P - 1] over the SH frequencies."""
    m = np.arange(2 * channels - 1) / max(2 * channels - 2, 1)
    return np.sinc((m - centre) / width)


def pixel_matrix(channels: int, pixels: int, centre: float, window: float,
                 shift: float = 0.0) -> np.ndarray:
    """[2P - 1, pixels]: the share of SH frequency bin ``m`` (unit width) each pixel collects.

    Pixels tile evenly a ``window`` (fraction) of the SH band centred at fraction ``centre``;
    ``shift`` (in SH bins) moves the spectrometer's wavelength calibration.
    """
    n = 2 * channels - 1
    mid, half = (centre * (n - 1) + 0.5), window * n / 2
    edges = np.linspace(mid - half, mid + half, pixels + 1) + shift
    lo = np.maximum(np.arange(n)[:, None], edges[None, :-1])
    hi = np.minimum(np.arange(n)[:, None] + 1, edges[None, 1:])
    return np.clip(hi - lo, 0, None)


def sh_counts(field: Any, pm: Any, pixel: Any) -> Any:
    """Spectrometer counts [B, pixels] of the SH of ``field`` [B, P] (real or complex).

    ``pm`` [2P - 1] is the phase-matching amplitude, ``pixel`` [2P - 1, pixels] the pixel
    matrix including the counts scale. All torch tensors (differentiable) or all numpy arrays
    (the bench: single-threaded, so it keeps its pace on a busy machine).
    """
    n = 2 * field.shape[1] - 1
    nfft = 1 << (n - 1).bit_length()
    if isinstance(field, torch.Tensor):
        spectrum = torch.fft.fft(field, n=nfft)
        sh = torch.fft.ifft(spectrum * spectrum)[:, :n] * pm
        return (sh.real ** 2 + sh.imag ** 2) @ pixel
    # numpy (the bench): single precision and in place, about twice as fast as complex128
    # with fresh temporaries; counts carry 16 bits, far above float32's rounding.
    spectrum = np.fft.fft(field.astype(np.complex64, copy=False), n=nfft)
    spectrum *= spectrum
    sh = np.fft.ifft(spectrum)[:, :n]
    sh *= pm.astype(np.float32, copy=False)
    power = np.abs(sh)
    power *= power
    return power @ pixel.astype(np.float32, copy=False)


def counts_scale(a0: np.ndarray, pm: np.ndarray, pixel: np.ndarray, full_counts: float) -> float:
    """Factor that makes the brightest pixel read ``full_counts`` with every channel open."""
    return full_counts / float(sh_counts(a0[None], pm, pixel).max())


class ShgPhysics(torch.nn.Module):
    def __init__(self, mapping: Mapping, physics: dict[str, Any]) -> None:
        super().__init__()
        channels = mapping.channels
        self.params = p = shg_params(physics, channels)
        self.samples = p["pixels"]
        a0 = source_spectrum(channels, p["centre"], p["width"])
        pm = phase_matching(channels, p["centre"], p["phase_matching"])
        pixel = pixel_matrix(channels, p["pixels"], p["centre"], p["window"])
        pixel *= counts_scale(a0, pm, pixel, p["full_counts"])
        self.register_buffer("a0", torch.from_numpy(a0), persistent=False)
        self.register_buffer("pm", torch.from_numpy(pm), persistent=False)
        self.register_buffer("pixel", torch.from_numpy(pixel), persistent=False)

    def forward(self, patterns: torch.Tensor) -> torch.Tensor:
        counts = sh_counts(patterns.double() * self.a0, self.pm, self.pixel)
        return counts.to(patterns.dtype)
