"""Simulated bench of the Duffing chain: the same equations as the nominal model, on a device
that differs from the design.

Hidden, seeded by the bench's ``seed``:

* each resonator's frequency 3 % RMS off the design (fabrication, about a third of its
  linewidth), its Q a factor exp(N(0, 0.1)) off, its Duffing coefficient 10 % RMS off; each
  link spring 5 % RMS off;
* the piezo's push 5 % off; the read-out gain 3 % off, and the pick-off is a real parallel
  plate: ``eta`` = 0.25 +- 0.05 (the nominal model reads linearly);
* temperature: every frequency wanders by +-0.2 % over 20,000 shots (one slow sine per
  resonator, random phase).

Noise, per shot: 5 mV RMS on the piezo drive (amplifier hiss), 2 mV RMS on the read-out.
Bench options ``imperfection`` and ``noise`` (default 1) scale every hidden deviation and every
noise source (0 and 0: the nominal model exactly). ``shot_s`` (default: the playback time,
samples / sample_rate, plus 100 us of re-arming) paces ``realtime`` timing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drivers.physics.encoding import Mapping
from drivers.sim.bench import Bench, Timing
from labd_duffing.chain import chain_of, chain_params, integrate

DRIFT_SHOTS = 20_000  # shots per period of the temperature wander
DRIFT = 0.002  # relative frequency wander (amplitude)
DRIVE_HISS = 5e-3  # volts RMS
READ_HISS = 2e-3  # volts RMS


class DuffingChainBench(Bench):
    def __init__(self, mapping: Mapping, physics: dict[str, Any], seed: int = 0,
                 timing: Timing = "fast", imperfection: float = 1.0, noise: float = 1.0,
                 shot_s: float | None = None) -> None:
        super().__init__(mapping, physics, seed, timing)
        self.params = chain_params(physics)
        self.samples = mapping.channels
        self.shot_s = shot_s if shot_s is not None else \
            self.samples / self.params["sample_rate"] + 100e-6
        self.noise = noise
        n, rng, s = self.params["resonators"], self.device_rng, imperfection
        self.ratio = 1 + s * 0.03 * rng.standard_normal(n)
        self.q = self.params["q_factor"] * np.exp(s * 0.10 * rng.standard_normal(n))
        self.beta = self.params["beta"] * (1 + s * 0.10 * rng.standard_normal(n))
        self.links = self.params["coupling"] * (1 + s * 0.05 * rng.standard_normal(n - 1))
        self.push = self.params["piezo_gain"] * (1 + s * 0.05 * rng.standard_normal())
        self.gain = self.params["readout_gain"] * (1 + s * 0.03 * rng.standard_normal())
        self.eta = s * (0.25 + 0.05 * rng.standard_normal())
        self.phase = rng.uniform(0, 2 * math.pi, n)
        self.wander = s * DRIFT

    def _respond(self, patterns: np.ndarray) -> np.ndarray:
        # the temperature of this batch: the wander at its middle shot
        t = 2 * math.pi * (self.shots + patterns.shape[0] / 2) / DRIFT_SHOTS
        ratio = self.ratio * (1 + self.wander * np.sin(t + self.phase))
        chain = chain_of(self.params, ratio, self.q, self.beta, self.links, self.push,
                         self.gain, self.eta)
        drive = np.asarray(patterns, dtype=np.float64)
        if self.noise:
            drive = drive + self.noise * DRIVE_HISS * self.noise_rng.standard_normal(drive.shape)
        trace = integrate(drive, chain, np.stack)
        if self.noise:
            trace += self.noise * READ_HISS * self.noise_rng.standard_normal(trace.shape)
        return trace

    def hidden(self) -> dict[str, Any]:
        return {"ratio": self.ratio.tolist(), "q": self.q.tolist(), "beta": self.beta.tolist(),
                "links": self.links.tolist(), "push": self.push, "gain": self.gain,
                "eta": self.eta}
