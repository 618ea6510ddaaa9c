"""How a system's ``(x, theta)`` become instrument patterns, and detector traces become ``y``.

Shared by the daemon (numpy, on the way to a real or simulated instrument) and by the trainer's
nominal models (torch, differentiable), so both see exactly the same mapping.

``Encoding`` (x ``[B, n_x]``, theta ``[P]`` or ``[B, P]`` -> patterns ``[B, channels]``):

1. ``layout`` combines the two vectors into one control vector ``u``:
   ``concat`` = ``[x, theta]``; ``interleave`` = ``[x0, t0, x1, t1, ...]`` (``P == n_x``);
   ``add`` = ``x + theta`` (``P == n_x``).
2. ``u * scale + offset`` gives drive units (volts, mask transmission).
3. each value is held for ``hold`` samples (sample-and-hold at the DAC rate);
4. ``pad_before`` and ``pad_after`` samples at ``rest`` (drive units) frame the shot, e.g. a
   silent tail during which a plate rings down.

``Decoding`` (trace ``[B, samples]`` -> y ``[B, output_dim]``): samples ``start:`` are cut into
``output_dim`` equal contiguous windows (any remainder at the end is dropped), each reduced by
``reduce`` (``mean``, ``sum`` or ``rms``), then multiplied by ``scale``.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


def _is_torch(a: Any) -> bool:
    """Whether ``a`` is a torch tensor. Checked by type name so that numpy callers (the daemon)
    never pay torch's import time; when it is a tensor, torch is already imported."""
    return type(a).__module__.startswith("torch")


def _torch() -> Any:
    return sys.modules["torch"]


def _cat(parts: list[Any], axis: int) -> Any:
    return _torch().cat(parts, dim=axis) if _is_torch(parts[0]) else np.concatenate(parts, axis)


class Encoding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["concat", "interleave", "add"] = "concat"
    scale: float = 1.0
    offset: float = 0.0
    hold: int = Field(1, ge=1)
    pad_before: int = Field(0, ge=0)
    pad_after: int = Field(0, ge=0)
    rest: float = 0.0

    def control_dim(self, input_dim: int, param_dim: int) -> int:
        """Length of the combined control vector ``u``."""
        if self.layout == "concat":
            return input_dim + param_dim
        if param_dim != input_dim:
            raise ValueError(f"layout {self.layout!r} needs param_dim == input_dim, "
                             f"got {param_dim} and {input_dim}")
        return 2 * input_dim if self.layout == "interleave" else input_dim

    def channels(self, input_dim: int, param_dim: int) -> int:
        """Samples (or channels) per shot that the drive receives."""
        return (self.control_dim(input_dim, param_dim) * self.hold
                + self.pad_before + self.pad_after)

    def combine(self, x: Any, theta: Any) -> Any:
        """The control vector ``u`` [B, control_dim] from x [B, n_x] and theta [P] or [B, P]."""
        if self.layout == "add":  # a theta [P] broadcasts over the rows by itself
            return x + theta
        batch = x.shape[0]
        if not _is_torch(x):  # numpy: one new array filled in place, no broadcast view and
            # no concatenate (the same values, several numpy calls fewer in the daemon's cycle)
            n = x.shape[1]
            u = np.empty((batch, self.control_dim(n, theta.shape[-1])),
                         np.result_type(x, theta))
            if self.layout == "concat":
                u[:, :n] = x
                u[:, n:] = theta
            else:
                u[:, 0::2] = x
                u[:, 1::2] = theta
            return u
        torch = _torch()
        if theta.ndim == 1:
            theta = theta.expand(batch, -1)
        if self.layout == "concat":
            return torch.cat([x, theta], dim=1)
        return torch.stack([x, theta], dim=2).reshape(batch, -1)

    def encode(self, x: Any, theta: Any) -> Any:
        """Patterns [B, channels] in drive units."""
        u = self.combine(x, theta)
        if self.scale != 1.0 or self.offset != 0.0:
            u = u * self.scale + self.offset
        if self.hold > 1:
            u = _torch().repeat_interleave(u, self.hold, dim=1) if _is_torch(u) else \
                np.repeat(u, self.hold, axis=1)
        if self.pad_before or self.pad_after:
            batch = u.shape[0]
            parts = []
            for n in (self.pad_before, self.pad_after):
                if _is_torch(u):
                    parts.append(_torch().full((batch, n), self.rest, dtype=u.dtype,
                                            device=u.device))
                else:
                    parts.append(np.full((batch, n), self.rest, dtype=u.dtype))
            u = _cat([parts[0], u, parts[1]], 1)
        return u


class Decoding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(0, ge=0)
    reduce: Literal["mean", "sum", "rms"] = "mean"
    scale: float = 1.0

    def width(self, samples: int, bins: int) -> int:
        """Samples per output bin when a trace of ``samples`` samples fills ``bins`` bins."""
        w = (samples - self.start) // bins
        if w < 1:
            raise ValueError(f"a trace of {samples} samples (from sample {self.start}) cannot "
                             f"fill {bins} bins")
        return w

    def decode(self, trace: Any, bins: int) -> Any:
        """y [B, bins] from a detector trace [B, samples] (numpy or torch, in its dtype)."""
        w = self.width(trace.shape[1], bins)
        if w == 1 and self.reduce != "rms":  # one sample per bin: the samples themselves
            y = trace[:, self.start:self.start + bins]
            return y * self.scale if self.scale != 1.0 else y
        cut = trace if self.start == 0 and w * bins == trace.shape[1] else \
            trace[:, self.start:self.start + w * bins]
        windows = cut.reshape(trace.shape[0], bins, w)
        if self.reduce != "rms" and not _is_torch(trace):  # numpy: what ``mean``/``sum`` and
            # ``* scale`` compute, in place in the sum (fewer calls in the daemon's cycle)
            y = np.add.reduce(windows, axis=2)
            factor = self.scale
            if self.reduce == "mean" and (w & (w - 1) or y.dtype != np.float64):
                np.true_divide(y, np.intp(w), out=y, casting="unsafe")  # (as np.mean does)
            elif self.reduce == "mean":  # float64, w a power of two: dividing by w is exact,
                factor = self.scale / w  # so it joins the scale (a window sum below 2**-1022
                # may differ in its last bit, far below what float32 holds)
            if factor != 1.0:
                np.multiply(y, factor, out=y)
            return y
        if self.reduce == "mean":
            y = windows.mean(2)
        elif self.reduce == "sum":
            y = windows.sum(2)
        else:
            y = (windows * windows).mean(2) ** 0.5
        return y * self.scale if self.scale != 1.0 else y


class Mapping(BaseModel):
    """A system's dimensions and ranges with its encoding and decoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_dim: int = Field(ge=1)
    param_dim: int = Field(ge=0)
    output_dim: int = Field(ge=1)
    input_range: tuple[float, float] = (0.0, 1.0)
    param_range: tuple[float, float] = (0.0, 1.0)
    encoding: Encoding = Encoding()
    decoding: Decoding = Decoding()

    @model_validator(mode="after")
    def _check(self) -> Mapping:
        for name in ("input_range", "param_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be [lo, hi] with lo < hi")
        self.encoding.control_dim(self.input_dim, self.param_dim)
        return self

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Mapping:
        """The mapping of a system's table or ``describe`` reply (its other keys ignored)."""
        return cls.model_validate({k: table[k] for k in cls.model_fields if k in table})

    def drive_span(self) -> tuple[float, float]:
        """Smallest and largest drive value the configured ranges can produce (drive units)."""
        (xl, xh), (tl, th) = self.input_range, self.param_range
        if self.param_dim == 0:
            lo, hi = xl, xh
        elif self.encoding.layout == "add":
            lo, hi = xl + tl, xh + th
        else:
            lo, hi = min(xl, tl), max(xh, th)
        ends = sorted((lo * self.encoding.scale + self.encoding.offset,
                       hi * self.encoding.scale + self.encoding.offset))
        if self.encoding.pad_before or self.encoding.pad_after:
            ends = [min(ends[0], self.encoding.rest), max(ends[1], self.encoding.rest)]
        return ends[0], ends[1]

    @property
    def channels(self) -> int:
        """Drive channels (samples) per shot."""
        return self.encoding.channels(self.input_dim, self.param_dim)

    def encode(self, x: Any, theta: Any) -> Any:
        return self.encoding.encode(x, theta)

    def decode(self, trace: Any) -> Any:
        return self.decoding.decode(trace, self.output_dim)
