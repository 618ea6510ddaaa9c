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

import math
from typing import Any

import numba
import numpy as np

from drivers.physics.encoding import Mapping
from drivers.physics.plate import (
    highpass_alpha,
    highpass_shot,
    mode_coefficients,
    mode_table,
    plate_params,
    respond_shot,
)
from drivers.sim.bench import Bench, Timing
from drivers.sim.drift import Drift, shot_times

ADC_BITS = 16
ADC_RANGE = 10.0  # volts, +- full scale


@numba.njit(cache=True, parallel=True, nogil=True)
def shots(patterns: np.ndarray, v_sat: float, alpha: float, coef: np.ndarray, b: np.ndarray,
          c: np.ndarray, beta: np.ndarray, gain: np.ndarray, hiss: np.ndarray,
          hiss_rms: np.float32) -> np.ndarray:
    """The readings [B, T] (volts, float64) of the DAC's ``patterns`` [B, T] (volts).

    Per shot, in one pass that stays in the cache: the speaker's soft saturation
    ``v_sat tanh(V / v_sat)`` (none if ``v_sat`` is infinite; a sample equal to the one
    before it, a value the DAC holds, reuses its tanh), its roll-off (``highpass``, ``alpha``),
    the plate (``respond`` with ``coef`` [B, K, 6], ``b``, ``c``, ``beta`` [K]) times the
    shot's ``gain`` [B]; then, unless ``hiss`` is empty, plus ``hiss_rms * hiss`` (``hiss``
    float32 standard normal [B, T], the product taken in float32) and quantised to
    ``ADC_BITS`` over +-``ADC_RANGE``, clipped to the codes.
    """
    batch, samples = patterns.shape
    saturating = math.isfinite(v_sat)
    noisy = hiss.shape[0] > 0
    lsb = 2 * ADC_RANGE / 2 ** ADC_BITS
    low = -2.0 ** (ADC_BITS - 1)
    high = 2.0 ** (ADC_BITS - 1) - 1
    out = np.empty((batch, samples))
    for s in numba.prange(batch):
        force = np.empty(samples)
        last = math.nan
        volts = 0.0
        for n in range(samples):
            v = float(patterns[s, n])
            if not saturating:
                volts = v
            elif v != last:
                last = v
                volts = v_sat * math.tanh(v / v_sat)
            force[n] = volts
        highpass_shot(force, alpha, force)
        trace = out[s]
        respond_shot(force, mode_table(coef[s], b, c, beta), trace)
        for n in range(samples):
            if not noisy:
                trace[n] *= gain[s]
                continue
            code = np.rint((trace[n] * gain[s] + hiss_rms * hiss[s, n]) / lsb)
            if code < low:
                code = low
            elif code > high:
                code = high
            trace[n] = code * lsb
    return out


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
        """Load the compiled kernel now (about 1 s), not during the first shot."""
        one = np.ones(1)
        shots(np.zeros((1, 1)), 1.0, 0.5, np.ones((1, 1, 6)), one, one, one, one,
              np.zeros((1, 1), dtype=np.float32), np.float32(1))

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
        # the noise stream: a gain per shot, then the hiss (both drawn before the physics,
        # which draws nothing, so the stream is that of drawing them where they act)
        gain = p["gain"] * (1 + self.noise * 0.01 * rng.standard_normal(batch))
        shape = patterns.shape if self.noise else (0, 0)
        hiss = rng.standard_normal(shape, dtype=np.float32)
        return shots(patterns, d["v_sat"], highpass_alpha(d["highpass_hz"], p["sample_rate"]),
                     coef, d["drive_coupling"], d["sensor_coupling"], d["beta"], gain, hiss,
                     np.float32(self.noise * 0.005))
