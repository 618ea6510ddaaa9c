"""Simulated bench of the nonlinear analog oscillator: DAQ -> RLC tank + junction -> ADC.

The same integrator as the nominal model (``drivers.physics.oscillator.integrate``), run on a
device whose hidden, seeded parameters differ from the nominal ones:

* component tolerances, uniform within the band: R +-5 %, C +-5 %, L +-10 %;
* the junction: I_s a factor exp(N(0, 0.4)) off, n off by N(0, 0.04) (relative);
* DAC gain 1 +- 2 %, offset +-10 mV, and a finite output bandwidth (first-order low-pass,
  corner 150-300 kHz: each 1 us step is rounded off); ADC gain 1 +- 2 %, offset +-5 mV;
* temperature wander of about +-5 K (RMS 3.5 K, periods 7, 19 and 47 min of bench time) that
  moves the junction (I_s doubles per 5 K, n V_T proportional to T), the coil resistance
  (+0.39 %/K, copper), the capacitor (-0.1 %/K), the ADC offset (+0.5 mV/K) and the gain of
  the DAC's output amplifier (+0.3 %/K): outputs drift by a few % over tens of minutes.

Noise, per shot: 1.5 mV RMS white noise on the DAC output (amplifier), a 1.5 % RMS gain jitter of
the DAC reference, ~1 mV RMS ADC noise; the ADC quantises to 14 bits over +-2.5 V and clips.
Together about 1-3 % relative std per output bin of the default system at mid-range drive.

Timing: ``shot_s`` (bench option, default 2 ms: 784 us of playback plus re-arming the DAQ);
the drift clock advances by ``shot_s`` per shot in both timings. Bench options ``imperfection``
and ``noise`` (default 1) scale every hidden deviation and every noise source, e.g. 0 and 0 for
a bench that reproduces the nominal model exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from drivers.physics.encoding import Mapping
from drivers.physics.oscillator import K_OVER_Q, integrate, oscillator_params
from drivers.sim.bench import Bench, Timing
from drivers.sim.drift import Drift, shot_times

ADC_BITS = 14
ADC_RANGE = 2.5  # volts, +- full scale


@numba.njit(cache=True, parallel=True, nogil=True)
def dac(patterns: np.ndarray, gain: np.ndarray, offset: float, hiss: np.ndarray,
        hiss_rms: float, alpha: float) -> np.ndarray:
    """The DAC's output [B, T] (volts, float64) for ``patterns`` [B, T] (volts): ``patterns *
    gain[b] + offset``, plus ``hiss_rms * hiss`` (``hiss`` standard normal [B, T]) unless
    ``hiss`` is empty, then rounded off by the output stage, a one-pole low-pass ``y[n] =
    y[n-1] + alpha (x[n] - y[n-1])`` from rest (none if ``alpha`` is 0)."""
    batch, samples = patterns.shape
    noisy = hiss.shape[0] > 0
    out = np.empty((batch, samples))
    for s in numba.prange(batch):
        y = 0.0
        for n in range(samples):
            x = patterns[s, n] * gain[s] + offset
            if noisy:
                x = x + hiss_rms * hiss[s, n]
            if alpha == 0.0:
                y = x
            else:
                y += alpha * (x - y)
            out[s, n] = y
    return out


@numba.njit(cache=True, parallel=True, nogil=True)
def adc(v: np.ndarray, gain: float, offset: np.ndarray, hiss: np.ndarray,
        hiss_rms: float) -> None:
    """The ADC's reading, in place of the capacitor voltage ``v`` [B, T]: ``v * gain +
    offset[b]``; unless ``hiss`` is empty, plus ``hiss_rms * hiss`` (``hiss`` standard normal
    [B, T]), quantised to ``ADC_BITS`` over +-``ADC_RANGE`` and clipped to the range."""
    lsb = 2 * ADC_RANGE / 2 ** ADC_BITS
    noisy = hiss.shape[0] > 0
    for s in numba.prange(v.shape[0]):
        for n in range(v.shape[1]):
            read = v[s, n] * gain + offset[s]
            if noisy:
                read = np.rint((read + hiss_rms * hiss[s, n]) / lsb) * lsb
                if read < -ADC_RANGE:
                    read = -ADC_RANGE
                elif read > ADC_RANGE - lsb:
                    read = ADC_RANGE - lsb
            v[s, n] = read


class OscillatorBench(Bench):
    def __init__(self, mapping: Mapping, physics: dict[str, Any], seed: int = 0,
                 timing: Timing = "fast", shot_s: float = 2e-3, imperfection: float = 1.0,
                 noise: float = 1.0) -> None:
        super().__init__(mapping, physics, seed, timing)
        self.params = oscillator_params(physics)
        self.samples = mapping.channels
        self.shot_s = float(shot_s)
        self.noise = float(noise)
        rng, k = self.device_rng, float(imperfection)
        p = self.params
        self.device = {
            "R": p["R"] * (1 + k * rng.uniform(-0.05, 0.05)),
            "L": p["L"] * (1 + k * rng.uniform(-0.10, 0.10)),
            "C": p["C"] * (1 + k * rng.uniform(-0.05, 0.05)),
            "I_s": p["I_s"] * np.exp(k * rng.normal(0, 0.7)),
            "n": p["n"] * (1 + k * rng.normal(0, 0.08)),
            "dac_gain": 1 + k * rng.uniform(-0.02, 0.02),
            "dac_offset": k * rng.uniform(-0.010, 0.010),
            "dac_corner_hz": 150e3 / k * rng.uniform(1.0, 2.0) if k else math.inf,
            "adc_gain": p["adc_gain"] * (1 + k * rng.uniform(-0.02, 0.02)),
            "adc_offset": k * rng.uniform(-0.005, 0.005),
            "temperature_swing": 5.0 * k,
        }
        self.drift = Drift(rng, (420.0, 1140.0, 2820.0))
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the compiled kernels now (about 1 s), not during the first shot."""
        one, zeros = np.ones(1), np.zeros((1, 1))
        v = integrate(dac(zeros, one, 0.0, zeros, 1.0, 0.5), r=one, ell=one, c=one, i_s=one,
                      nvt=one, dt=1e-9, substeps=1, states=np.empty((0, 0, 0)))
        adc(v, 1.0, one, zeros, 1.0)

    def hidden(self) -> dict[str, Any]:
        return dict(self.device)

    def temperature(self, times_s: np.ndarray) -> np.ndarray:
        """Device temperature (K) at bench-clock times (s)."""
        swing = self.device["temperature_swing"] / np.sqrt(2)  # about +-5 K peak, RMS 3.5 K
        return self.params["temperature"] + swing * self.drift(times_s)

    def _respond(self, patterns: np.ndarray) -> np.ndarray:
        batch = patterns.shape[0]
        d, p, rng = self.device, self.params, self.noise_rng
        temp = self.temperature(shot_times(self.shots, batch, self.shot_s))
        delta = temp - p["temperature"]
        gain = d["dac_gain"] * (1 + 3e-3 * delta) \
            * (1 + self.noise * 0.015 * rng.standard_normal(batch))
        # the DAC's and the ADC's hiss, both drawn now: the integration draws nothing, so the
        # stream is that of drawing each where it acts
        shape = patterns.shape if self.noise else (0, 0)
        dac_hiss = rng.standard_normal(shape)
        adc_hiss = rng.standard_normal(shape)
        corner = d["dac_corner_hz"]
        alpha = 1 - math.exp(-2 * math.pi * corner / p["sample_rate"]) \
            if math.isfinite(corner) else 0.0
        drive = dac(patterns, gain, d["dac_offset"], dac_hiss, self.noise * 0.0015, alpha)
        v = integrate(drive, r=d["R"] * (1 + 3.9e-3 * delta), ell=np.full(batch, d["L"]),
                      c=d["C"] * (1 - 1e-3 * delta), i_s=d["I_s"] * 2.0 ** (delta / 5),
                      nvt=d["n"] * K_OVER_Q * temp,
                      dt=1.0 / (p["sample_rate"] * p["substeps"]), substeps=p["substeps"],
                      states=np.empty((0, 0, 0)))
        adc(v, d["adc_gain"], d["adc_offset"] + 5e-4 * delta, adc_hiss, self.noise * 0.001)
        return v
