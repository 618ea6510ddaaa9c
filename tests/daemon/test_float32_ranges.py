"""Ranges and drive limits whose ends float32 cannot hold (0.8, 0.1) accept what a client
clipping in float32 sends, and still refuse what is really outside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labd.client import LabClient, OutOfRange
from labd.daemon.process import LocalDaemon
from tests.configs import loopback

# 0.8 + 0.1 in float32 is 0.90000004, past float32(0.9) = 0.89999998: the drive's explicit
# limit of 0.9 is reached by rounding alone.
CONFIG = loopback("odd", 3, input_range=[0.0, 0.8], param_range=[-0.1, 0.1],
                  drive={"driver": "sim.dac", "limits": [-0.1, 0.9]})


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> LocalDaemon:
    path: Path = tmp_path_factory.mktemp("odd") / "rig.toml"
    path.write_text(CONFIG)
    with LocalDaemon(config=path) as daemon:
        yield daemon


def test_range_ends_clipped_in_float32_are_measured(odd: LocalDaemon) -> None:
    x = np.clip(np.array([[0.0, 0.5, 1.0]], np.float32), 0.0, 0.8)  # 0.8 -> 0.800000012
    theta = np.clip(np.array([-1.0, 0.0, 1.0], np.float32), -0.1, 0.1)
    assert float(x.max()) > 0.8 and float(theta.max()) > 0.1  # float32 rounded them up
    with LabClient(odd.endpoint) as lab:
        y = lab.forward("odd", x, theta)  # before: out_of_range, then a drive limit fault
    np.testing.assert_allclose(y, x + theta, rtol=1e-5, atol=1e-6)


def test_values_really_outside_are_still_refused(odd: LocalDaemon) -> None:
    theta = np.zeros(3, np.float32)
    with LabClient(odd.endpoint) as lab:
        for bad in (0.8001, -0.0001):
            with pytest.raises(OutOfRange):
                lab.forward("odd", np.full((1, 3), bad, np.float32), theta)
        with pytest.raises(OutOfRange):
            lab.forward("odd", np.full((1, 3), 0.5, np.float32), np.full(3, 0.1001, np.float32))
