"""Simulated bench of the SHG system: laser -> pulse shaper -> chi(2) crystal -> spectrometer.

The same SH physics as the nominal model (``drivers.physics.shg.sh_counts``), on a device whose
hidden, seeded parameters differ from the nominal ones:

* shaper: the mask value is quantised to 8 bits; the transmission is
  ``t(c) = floor + (g_k - floor) c^gamma`` with a finite contrast (``floor`` = 1 %), a response
  exponent ``gamma`` 1.03-1.08 (either side of 1 by that much), per-channel gains ``g_k``
  3 % RMS off; each channel leaks 2-5 % of its field into each neighbour (crosstalk, a blur);
* residual spectral phase ``phi2 u^2 / 2 + phi3 u^3 / 6`` (``u`` in [-1, 1] over the shaper),
  ``|phi2|``, ``|phi3|`` 0.5-1.5 rad;
* laser power 3 % RMS off nominal, then drifting about +-1 % (RMS 0.5 %, periods 3, 8 and
  21 min of bench time); the SH follows the square of the power;
* spectrometer: wavelength calibration 0-0.5 SH bins off, per-pixel response with a +-5 % tilt
  and 2 % RMS pixel-to-pixel spread, a dark level of 50 counts per pixel.

Noise per shot: 0.7 % RMS laser intensity jitter over the integration, shot noise (one count
per photoelectron), dark-count noise, 6 counts RMS read noise; counts are rounded and clip at
65535 (16 bits). About 1.5-3 % relative std per output bin of the default system at mid-range
drive.

Timing: ``shot_s`` (bench option, default 1 ms: the spectrometer's integration time; the
pattern settle of a real shaper is not counted); the drift clock advances by ``shot_s`` per
shot in both timings. Bench options ``imperfection`` and ``noise`` (default 1) scale every
hidden deviation and noise source; with both 0 the bench reproduces the nominal model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivers.physics.encoding import Mapping
from drivers.physics.shg import (
    counts_scale,
    phase_matching,
    pixel_matrix,
    sh_counts,
    shg_params,
    source_spectrum,
)
from drivers.sim.bench import Bench, Timing
from drivers.sim.drift import Drift, shot_times

FULL_WELL = 65535  # counts, 16-bit


class ShgBench(Bench):
    def __init__(self, mapping: Mapping, physics: dict[str, Any], seed: int = 0,
                 timing: Timing = "fast", shot_s: float = 1e-3, imperfection: float = 1.0,
                 noise: float = 1.0) -> None:
        super().__init__(mapping, physics, seed, timing)
        channels = mapping.channels
        self.params = p = shg_params(physics, channels)
        self.samples = p["pixels"]
        self.shot_s = float(shot_s)
        self.noise = float(noise)
        rng, k = self.device_rng, float(imperfection)

        def signed(lo: float, hi: float) -> float:
            return float(rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi))

        u = np.linspace(-1, 1, channels)
        phi2, phi3 = k * signed(0.5, 1.5), k * signed(0.5, 1.5)
        tilt = np.linspace(-1, 1, p["pixels"]) * k * signed(0.0, 0.05)
        self.device = {
            "bits": 8 if k else 0,
            "floor": 0.01 * k,
            "gamma": 1 + k * signed(0.03, 0.08),
            "channel_gain": 1 + k * 0.03 * rng.standard_normal(channels),
            "crosstalk": k * rng.uniform(0.02, 0.05, 2),
            "phase": phi2 * u ** 2 / 2 + phi3 * u ** 3 / 6,
            "power": 1 + k * 0.03 * rng.standard_normal(),
            "power_swing": 0.007 * k,
            "calibration_shift": k * rng.uniform(0, 0.5),
            "pixel_response": (1 + tilt) * (1 + k * 0.02 * rng.standard_normal(p["pixels"])),
            "dark": 50.0 * k,
        }
        self.drift = Drift(rng, (180.0, 480.0, 1260.0))
        d = self.device
        a0 = source_spectrum(channels, p["centre"], p["width"])
        pm = phase_matching(channels, p["centre"], p["phase_matching"])
        scale = counts_scale(a0, pm, pixel_matrix(channels, p["pixels"], p["centre"],
                                                  p["window"]), p["full_counts"])
        pixel = pixel_matrix(channels, p["pixels"], p["centre"], p["window"],
                             d["calibration_shift"]) * scale * d["pixel_response"]
        self._a0 = a0 * np.exp(1j * d["phase"])
        self._pm = pm
        self._pixel = pixel

    def hidden(self) -> dict[str, Any]:
        return {key: np.copy(value) for key, value in self.device.items()}

    def power(self, times_s: np.ndarray) -> np.ndarray:
        """Laser power relative to nominal at bench-clock times (s)."""
        swing = self.device["power_swing"] / np.sqrt(2)
        return self.device["power"] * (1 + swing * self.drift(times_s))

    def transmission(self, patterns: np.ndarray) -> np.ndarray:
        """The shaper's field transmission [B, P] for mask values ``patterns``, crosstalk in."""
        d = self.device
        c = np.clip(patterns, 0.0, 1.0)
        if d["bits"]:
            levels = 2 ** d["bits"] - 1
            c = np.round(c * levels) / levels
        t = d["floor"] + (d["channel_gain"] - d["floor"]) * c ** d["gamma"]
        left, right = d["crosstalk"]
        leaked = t * (1 - left - right)
        leaked[:, 1:] += left * t[:, :-1]
        leaked[:, :-1] += right * t[:, 1:]
        return leaked

    def _respond(self, patterns: np.ndarray) -> np.ndarray:
        batch = patterns.shape[0]
        rng, n = self.noise_rng, self.noise
        power = self.power(shot_times(self.shots, batch, self.shot_s))
        if n:
            power = power * (1 + n * 0.007 * rng.standard_normal(batch))
        field = self.transmission(patterns) * np.sqrt(power)[:, None] * self._a0
        counts = sh_counts(field, self._pm, self._pixel) + self.device["dark"]
        if n:
            sigma = np.sqrt(np.maximum(counts, 0.0) + (6.0 ** 2))
            counts += n * sigma * rng.standard_normal(counts.shape, dtype=np.float32)
            counts = np.clip(np.round(counts), 0, FULL_WELL)
        return counts
