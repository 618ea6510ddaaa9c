"""Encoding and decoding on numpy arrays (the daemon's path, filled in place) give exactly what
the plain formulas give: concatenated or interleaved rows, window means times the scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivers.physics.encoding import Decoding, Encoding


@pytest.mark.parametrize("layout", ["concat", "interleave", "add"])
@pytest.mark.parametrize("theta_rows", [False, True])
def test_numpy_encoding_is_the_plain_formula(layout: str, theta_rows: bool) -> None:
    rng = np.random.default_rng(1)
    for dtypes in ((np.float32, np.float32), (np.float32, np.float64), (np.float64, np.float32)):
        x = rng.random((7, 5)).astype(dtypes[0])
        theta = rng.random((7, 5) if theta_rows else 5).astype(dtypes[1])
        rows = np.broadcast_to(theta, x.shape)
        expected = {"concat": np.concatenate([x, rows], 1), "add": x + theta,
                    "interleave": np.stack([x, rows], 2).reshape(7, 10)}[layout]
        enc = Encoding(layout=layout, hold=2, pad_before=1, pad_after=2, rest=-1.0)
        u = enc.encode(x, theta)
        padded = np.full((7, 1 + 2 * expected.shape[1] + 2), -1.0, expected.dtype)
        padded[:, 1:-2] = np.repeat(expected, 2, axis=1)
        assert u.dtype == padded.dtype and u.tobytes() == padded.tobytes()
        torch_u = enc.encode(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(theta)))
        if dtypes[0] == dtypes[1]:
            np.testing.assert_array_equal(torch_u.numpy(), u)


@pytest.mark.parametrize("reduce", ["mean", "sum", "rms"])
@pytest.mark.parametrize("width", [1, 3, 8])
@pytest.mark.parametrize("start,extra", [(0, 0), (2, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_decoding_is_the_plain_formula(reduce: str, width: int, start: int, extra: int,
                                             dtype: type) -> None:
    """Bit for bit, also for a power-of-two width (the division folded into the scale)."""
    rng = np.random.default_rng(2)
    trace = (rng.random((9, start + 12 * width + extra)) * 6e4).astype(dtype)
    windows = trace[:, start:start + 12 * width].reshape(9, 12, width)
    for scale in (1.0, 2e-4, 3.0):
        expected = {"mean": windows.mean(2), "sum": windows.sum(2),
                    "rms": (windows * windows).mean(2) ** 0.5}[reduce] * scale
        y = Decoding(start=start, reduce=reduce, scale=scale).decode(trace, 12)
        assert y.dtype == expected.dtype and y.tobytes() == expected.tobytes()
