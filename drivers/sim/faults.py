"""Fault injection for simulated instruments: the ways real instruments fail, on demand.

``FaultInjector(timeout=, garbage=, disconnect=, slow=, hang_s=, slow_s=, seed=)`` draws, for
each instrument call, at most one fault with the given probabilities (each in [0, 1], summing
to at most 1), from its own random stream so the device and its noise are unchanged:

* ``timeout``: the call hangs for ``hang_s`` seconds, then fails (set ``hang_s`` beyond the
  system's ``timeout_s`` to exercise the daemon's watchdog);
* ``garbage``: the reply is unusable (a truncated trace or one full of NaN);
* ``disconnect``: the link drops; every call fails until the instrument is reopened;
* ``slow``: the call succeeds ``slow_s`` seconds late.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

KINDS = ("timeout", "garbage", "disconnect", "slow")


class FaultInjector(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(0.0, ge=0, le=1)
    garbage: float = Field(0.0, ge=0, le=1)
    disconnect: float = Field(0.0, ge=0, le=1)
    slow: float = Field(0.0, ge=0, le=1)
    hang_s: float = Field(2.0, ge=0)
    slow_s: float = Field(0.2, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FaultInjector:
        if sum(getattr(self, k) for k in KINDS) > 1:
            raise ValueError("fault probabilities must sum to at most 1")
        self._rng = np.random.default_rng([self.seed, 99])
        self._active = any(getattr(self, k) for k in KINDS)
        return self

    def draw(self) -> str | None:
        """The fault of the next call, or None."""
        if not self._active:
            return None
        u = self._rng.random()
        for kind in KINDS:
            p = getattr(self, kind)
            if u < p:
                return kind
            u -= p
        return None

    def garble(self, trace: np.ndarray) -> np.ndarray:
        """An unusable version of ``trace``: truncated, or NaN where values should be."""
        if self._rng.random() < 0.5:
            return trace[:, : max(trace.shape[1] // 2, 1)]
        return np.full_like(trace, np.nan)
