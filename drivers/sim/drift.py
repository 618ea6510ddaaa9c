"""Slow, smooth, seeded drift of a device parameter as a function of the bench clock.

``Drift(rng, periods_s)`` draws, once, a random phase and weight per period; ``drift(t_s)``
(``t_s`` an array of times in seconds) returns a dimensionless wander in about [-1, 1]: a sum of
sinusoids with the given periods, normalised to unit RMS over time. A bench scales it into the
physical quantity (laser power, plate temperature, transistor temperature). Same ``rng`` state,
same path: a seeded device drifts identically on every start.
"""

from __future__ import annotations

import numpy as np


class Drift:
    def __init__(self, rng: np.random.Generator, periods_s: tuple[float, ...]) -> None:
        self.omega = 2 * np.pi / np.asarray(periods_s, dtype=float)
        self.phase = rng.uniform(0, 2 * np.pi, len(periods_s))
        weights = rng.uniform(0.5, 1.0, len(periods_s))
        # a sum of sinusoids of unit amplitude has mean square sum(w^2)/2
        self.weights = weights / np.sqrt(np.sum(weights ** 2) / 2)

    def __call__(self, t_s: np.ndarray) -> np.ndarray:
        t = np.asarray(t_s, dtype=float)[..., None]
        return np.sum(self.weights * np.sin(self.omega * t + self.phase), axis=-1)


def shot_times(first_shot: int, count: int, shot_s: float) -> np.ndarray:
    """Bench-clock times (s) of ``count`` shots starting at shot number ``first_shot``."""
    return (first_shot + np.arange(count)) * shot_s
