"""The store's tests run on both of its file paths: the native POSIX calls and the portable
ones that Windows uses (``labd.store.files.PORTABLE``), forced here on Linux, in this process
and in the daemons and crashing writers the tests start."""

from __future__ import annotations

import os

import pytest

from labd.store import files


@pytest.fixture(params=["native", "portable"])
def file_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    portable = request.param == "portable"
    monkeypatch.setattr(files, "PORTABLE", portable)
    monkeypatch.setenv("LABD_STORE_PORTABLE", "1" if portable else "0")
    if portable:  # what Windows lacks: a call left on the portable path fails here
        for name in ("pwritev", "pwrite", "pread", "fdatasync"):
            monkeypatch.delattr(os, name)
    return request.param
