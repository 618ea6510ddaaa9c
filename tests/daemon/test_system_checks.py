"""The daemon's finiteness check of a measured ``y`` (``labd.daemon.system._finite``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from labd.daemon.system import SMALL, _finite


@pytest.mark.parametrize("size", [SMALL, SMALL + 1, 4096])
def test_finite_values_pass_and_nan_or_inf_do_not_without_warnings(size: int) -> None:
    """Huge finite values (whose sum overflows) are finite; NaN, inf and inf beside -inf are
    not; and nothing warns (a warning would land in the daemon's log at every such reply)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = np.full((1, size), 3e38, np.float32)
        assert _finite(big)
        for bad in (np.nan, np.inf, -np.inf):
            y = big.copy()
            y[0, size // 2] = bad
            assert not _finite(y)
        both = np.zeros((1, size), np.float32)
        both[0, :2] = (np.inf, -np.inf)
        assert not _finite(both)
