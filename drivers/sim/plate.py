"""Simulated bench of the oscillating plate: DAC -> amplifier, speaker -> plate -> accelerometer.

The same modal recursion as the nominal model (``drivers.physics.plate.respond``), run on a
device whose hidden, seeded parameters differ from the nominal plate:

* modal frequencies 1 % RMS off (normal), damping ratios 10 % RMS off, drive and sensor
  couplings 5 % RMS off plus 0.03 (plate units) of mode-shape error;
* weak Duffing stiffening: ``beta_k`` such that a mode swinging at its 1 V resonant amplitude
  stiffens by 2-5 % (uniform);
* speaker saturation ``V_sat tanh(V / V_sat)`` with ``V_sat`` = 2.5 V +- 10 %, and a roll-off
  corner 10 % RMS off;
* temperature wander of about +-2 K (RMS 1.4 K, periods 9, 23 and 61 min of bench time)
  shifting every modal frequency by -0.05 %/K.

Noise: 1 % RMS per-shot gain jitter (amplifier), 5 mV RMS white noise per sample
(accelerometer and ADC); the ADC quantises to 16 bits over +-10 V and clips. About 1-2 %
relative std per output bin of the default system at mid-range drive.

Timing: ``shot_s`` (bench option, default 0.15 s: 33 ms of playback for the default system
plus a silent gap of more than three decay times of the slowest mode, so every shot starts
from rest); the drift clock advances by ``shot_s`` per shot in both timings. Bench options
``imperfection`` and ``noise`` (default 1) scale every hidden deviation and noise source.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drivers.physics.encoding import Mapping
from drivers.physics.plate import (
    highpass,
    highpass_alpha,
    mode_coefficients,
    plate_params,
    respond,
)
from drivers.sim.bench import Bench, Timing
from drivers.sim.drift import Drift, shot_times

ADC_BITS = 16
ADC_RANGE = 10.0  # volts, +- full scale


class PlateBench(Bench):
    def __init__(self, mapping: Mapping, physics: dict[str, Any], seed: int = 0,
                 timing: Timing = "fast", shot_s: float = 0.15, imperfection: float = 1.0,
                 noise: float = 1.0) -> None:
        super().__init__(mapping, physics, seed, timing)
        self.params = p = plate_params(physics)
        self.samples = mapping.channels
        self.shot_s = float(shot_s)
        self.noise = float(noise)
        rng, k = self.device_rng, float(imperfection)
        modes = len(p["freqs"])
        freqs = p["freqs"] * (1 + k * 0.01 * rng.standard_normal(modes))
        zetas = p["zetas"] * (1 + k * 0.10 * rng.standard_normal(modes))
        b = (p["drive_coupling"] * (1 + k * 0.05 * rng.standard_normal(modes))
             + k * 0.03 * rng.standard_normal(modes))
        c = (p["sensor_coupling"] * (1 + k * 0.05 * rng.standard_normal(modes))
             + k * 0.03 * rng.standard_normal(modes))
        omega = 2 * np.pi * freqs
        resonant = np.maximum(np.abs(b), 0.1) / (2 * zetas * omega ** 2)  # metres per volt
        stiffening = k * rng.uniform(0.02, 0.05, modes)
        self.device = {
            "freqs": freqs, "zetas": zetas, "drive_coupling": b, "sensor_coupling": c,
            "beta": stiffening * omega ** 2 / resonant ** 2,
            "v_sat": 2.5 * (1 + k * rng.uniform(-0.1, 0.1)) if k else np.inf,
            "highpass_hz": p["highpass_hz"] * (1 + k * 0.10 * rng.standard_normal()),
            "temperature_swing": 2.0 * k,
            "freq_tempco": -5e-4,
        }
        self.drift = Drift(rng, (540.0, 1380.0, 3660.0))
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the compiled kernels now (about 1 s), not during the first shot."""
        zeros = np.zeros((1, 1))
        force = highpass(zeros, 0.5)
        respond(force, mode_coefficients(np.ones((1, 1)), np.full((1, 1), 0.1), 1e-3),
                np.ones(1), np.ones(1), np.zeros(1))

    def hidden(self) -> dict[str, Any]:
        return {key: np.copy(value) for key, value in self.device.items()}

    def temperature_offset(self, times_s: np.ndarray) -> np.ndarray:
        """Plate temperature minus its mean (K) at bench-clock times (s)."""
        return self.device["temperature_swing"] / np.sqrt(2) * self.drift(times_s)

    def _respond(self, patterns: np.ndarray) -> np.ndarray:
        batch = patterns.shape[0]
        d, p, rng = self.device, self.params, self.noise_rng
        delta = self.temperature_offset(shot_times(self.shots, batch, self.shot_s))
        freqs = d["freqs"] * (1 + d["freq_tempco"] * delta[:, None])
        coef = mode_coefficients(freqs, d["zetas"][None], 1 / p["sample_rate"])
        volts = np.asarray(patterns, dtype=np.float64)
        if np.isfinite(d["v_sat"]):
            volts = d["v_sat"] * np.tanh(volts / d["v_sat"])
        force = highpass(volts, highpass_alpha(d["highpass_hz"], p["sample_rate"]))
        acc = respond(force, coef, d["drive_coupling"], d["sensor_coupling"], d["beta"])
        acc *= p["gain"] * (1 + self.noise * 0.01 * rng.standard_normal((batch, 1)))
        if self.noise:
            acc += self.noise * 0.005 * rng.standard_normal(acc.shape, dtype=np.float32)
            lsb = 2 * ADC_RANGE / 2 ** ADC_BITS
            acc = np.clip(np.round(acc / lsb), -2 ** (ADC_BITS - 1), 2 ** (ADC_BITS - 1) - 1) * lsb
        return acc
