"""The driver base: ``span`` (the one finiteness-and-range check of drives and the daemon) and
the fixed life cycle of ``Instrument.open``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from drivers.base import SMALL, Detector, InstrumentError, span


@pytest.mark.parametrize("size", [SMALL, SMALL + 1, 4096])
def test_span_of_huge_finite_values_and_of_nan_or_inf_without_warnings(size: int) -> None:
    """Huge finite values (whose sum overflows) have a span; NaN, inf and inf beside -inf give
    NaN; and nothing warns (a warning would land in the daemon's log at every such reply)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = np.full((1, size), 3e38, np.float32)
        big[0, 0] = -1.0
        assert span(big) == (-1.0, pytest.approx(3e38))
        for bad in (np.nan, np.inf, -np.inf):
            y = big.copy()
            y[0, size // 2] = bad
            assert all(math.isnan(v) for v in span(y))
        both = np.zeros((1, size), np.float32)
        both[0, :2] = (np.inf, -np.inf)
        assert all(math.isnan(v) for v in span(both))


class Probe(Detector):
    """A detector whose hooks record the life cycle and fail on demand."""

    idn_pattern = r"^ACME,PROBE"

    def __init__(self, idn: str = "ACME,PROBE,1", fail: str = "") -> None:
        super().__init__("probe", 4)
        self.answer, self.fail, self.calls = idn, fail, []

    def connect(self) -> None:
        self.calls.append("connect")
        if self.fail == "connect":
            raise InstrumentError(self.name, "unreachable", "open")

    def disconnect(self) -> None:
        self.calls.append("disconnect")
        raise OSError("a dead link may fail to close")  # close() must not raise for it

    def identify(self) -> str:
        self.calls.append("identify")
        return self.answer

    def configure(self) -> None:
        self.calls.append("configure")
        if self.fail == "configure":
            raise InstrumentError(self.name, "refused a setting", "RANGE 5", retryable=False)

    def read(self) -> np.ndarray:
        return np.zeros((self.armed("READ?"), self.samples))


def test_open_is_connect_identify_configure_then_open_and_idempotent():
    probe = Probe()
    probe.open()
    probe.open()
    assert probe.calls == ["disconnect", "connect", "identify", "configure"]
    assert probe.is_open and probe.health() == {"open": True, "idn": "ACME,PROBE,1"}
    probe.close()
    probe.close()
    assert not probe.is_open and probe.health()["open"] is False


@pytest.mark.parametrize("fail", ["connect", "configure"])
def test_a_failed_open_disconnects_what_it_connected(fail):
    probe = Probe(fail=fail)
    with pytest.raises(InstrumentError):
        probe.open()
    assert probe.calls[-1] == "disconnect" and not probe.is_open


def test_another_instrument_is_refused_at_open_and_not_retryable():
    probe = Probe(idn="ACME,OTHER,1")
    with pytest.raises(InstrumentError, match="identifies as 'ACME,OTHER,1'") as err:
        probe.open()
    assert not err.value.retryable and err.value.command == "*IDN?"
    assert "configure" not in probe.calls and probe.calls[-1] == "disconnect"


def test_read_without_arm_is_an_error_naming_the_command():
    probe = Probe()
    probe.open()
    with pytest.raises(InstrumentError, match="without arm") as err:
        probe.read()
    assert err.value.command == "READ?" and not err.value.retryable
    probe.arm(3)
    assert probe.read().shape == (3, 4)
