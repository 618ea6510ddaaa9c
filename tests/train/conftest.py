"""Fixtures of the trainer's tests: real daemons (subprocesses) serving the embedded default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labd.client import LabClient
from labd.daemon.process import LocalDaemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[LocalDaemon]:
    with LocalDaemon() as d:
        yield d


@pytest.fixture(scope="module")
def client(daemon: LocalDaemon) -> Iterator[LabClient]:
    with LabClient(daemon.endpoint) as c:
        yield c
