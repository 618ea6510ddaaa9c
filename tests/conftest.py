"""Shared fixtures: real daemons as subprocesses on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labd.daemon.process import LocalDaemon
from tests.configs import loopback, table

#: A small test rig: a fast loopback, a slow loopback (20 ms per shot, realtime) with a queue
#: of 4, and a loopback whose requests are limited to 64 KiB.
_UNIT_RANGES = {"input_range": [-1.0, 1.0], "param_range": [-1.0, 1.0]}
TEST_CONFIG = (
    table("server", max_message_bytes=65536)
    + loopback("fast", 4, **_UNIT_RANGES, max_batch=8, physics={"gain": 2.0},
               bench={"seed": 0, "timing": "fast"})
    + loopback("slow", 4, **_UNIT_RANGES, queue_depth=4,
               bench={"seed": 0, "timing": "realtime", "shot_s": 0.02}))


@pytest.fixture(scope="session")
def test_config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "rig.toml"
    path.write_text(TEST_CONFIG)
    return path


@pytest.fixture(scope="module")
def rig(test_config_path: Path) -> Iterator[LocalDaemon]:
    """A daemon serving the test rig, shared by a test module."""
    with LocalDaemon(config=test_config_path) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def default_daemon() -> Iterator[LocalDaemon]:
    """A daemon serving the embedded default configuration, shared by the session."""
    with LocalDaemon() as daemon:
        yield daemon
