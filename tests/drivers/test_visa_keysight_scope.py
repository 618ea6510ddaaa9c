"""Keysight InfiniiVision driver against expected dialogues: set-up, arming, the point count
asked for after the acquisition and read back (never below 100), the error queue after every
acquisition, preamble scaling, and a record of another length (issue 17 defect 8)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError
from drivers.testing import expected_dialogue
from drivers.visa.keysight_scope import KeysightInfiniiVision, Preamble
from drivers.visa.scpi import format_block

SIM = str(Path(__file__).parents[2] / "drivers" / "emulators" / "instruments.yaml") + "@sim"
IDN = "KEYSIGHT TECHNOLOGIES,DSOX3024T,MY00000000,07.50.2021102830"
OK = '+0,"No error"'
OPEN = [("*IDN?", IDN), ("*CLS", None), (":STOP", None), (":CHAN1:DISP ON", None),
        (":CHAN1:RANG 4", None), (":CHAN1:OFFS 0", None), (":TRIG:MODE EDGE", None),
        (":TRIG:EDGE:SOUR EXTernal", None), (":TRIG:EDGE:SLOP POS", None),
        (":TRIG:EDGE:LEV 0.5", None), (":TRIG:SWE NORM", None), (":TIM:REF LEFT", None),
        (":TIM:POS 0", None), (":ACQ:TYPE NORM", None), (":WAV:SOUR CHAN1", None),
        (":WAV:FORM WORD", None), (":WAV:BYT LSBF", None), (":WAV:UNS 0", None),
        (":WAV:POIN:MODE RAW", None), (":SYST:ERR?", OK)]


def scope(samples: int = 60, **options) -> KeysightInfiniiVision:
    return KeysightInfiniiVision("osc.detector", samples, "TCPIP::scope::INSTR",
                                 sample_rate=2e6, v_range=4.0, trigger_level=0.5, **options)


def preamble(points: int, x_increment: float = 5e-7) -> str:
    return f"+1,+0,+{points},+1,{x_increment:+.6E},+0.0E+00,+0,+1.000000E-03,+2.5E-01,+0"


def record(codes: np.ndarray) -> bytes:
    return format_block(codes.astype("<i2").tobytes()) + b"\n"


def acquisition(n: int, pre: str, data: bytes, given: int | None = None,
                error: str = OK) -> list:
    """Arm a record of ``n`` points at 2 MS/s, wait, ask for ``n`` points, read it all."""
    given = n if given is None else given
    steps = [(f":TIM:RANG {n / 2e6:.6g}", None), (":SING", None), (":AER?", "0"),
             (":AER?", "1"), (":OPER:COND?", "+8"), (":OPER:COND?", "+0"),
             (f":WAV:POIN {n}", None), (":WAV:POIN?", f"+{given}")]
    if given != n:
        return [*steps, (":SYST:ERR?", error)]
    return [*steps, (":WAV:PRE?", pre), (":WAV:DATA?", data), (":SYST:ERR?", error),
            *([] if error == OK else [(":SYST:ERR?", OK)])]


def test_open_sets_channel_trigger_timebase_and_signed_words():
    detector = scope()
    with expected_dialogue(detector, OPEN):
        detector.open()


def test_two_shots_scaled_to_volts_with_the_points_read_back():
    """The point count is set after the record is taken and read back; errors are read after
    the acquisition."""
    codes = np.arange(120) * 10
    detector = scope()
    with expected_dialogue(detector, [*OPEN, *acquisition(120, preamble(120), record(codes))]):
        detector.open()
        detector.arm(2)
        y = detector.read()
    np.testing.assert_allclose(y, (codes * 1e-3 + 0.25).reshape(2, 60))


def test_fewer_than_100_points_record_100_on_the_same_grid():
    """:WAV:POIN below 100 is error -222: one shot of 60 samples records 100 points over
    50 us (100 / 2 MS/s) and keeps the first 60."""
    codes = np.arange(100)
    detector = scope()
    with expected_dialogue(detector, [*OPEN, *acquisition(100, preamble(100), record(codes))]):
        detector.open()
        detector.arm(1)
        y = detector.read()
    np.testing.assert_allclose(y, [codes[:60] * 1e-3 + 0.25])


def test_an_error_of_the_acquisition_fails_the_read():
    detector = scope()
    script = [*OPEN, *acquisition(120, preamble(120), record(np.zeros(120)),
                                  error='-222,"Data out of range"')]
    with expected_dialogue(detector, script):
        detector.open()
        detector.arm(2)
        with pytest.raises(InstrumentError, match="-222 Data out of range") as err:
            detector.read()
    assert err.value.command == ":WAV:DATA?" and not err.value.retryable


def test_fewer_points_read_back_is_an_error_naming_both_counts():
    detector = scope()
    script = [*OPEN, *acquisition(120, "", b"", given=62)]
    with expected_dialogue(detector, script):
        detector.open()
        detector.arm(2)
        with pytest.raises(InstrumentError, match="gives \\+62 points of this record for "
                                                  ":WAV:POIN 120") as err:
            detector.read()
    assert not err.value.retryable and err.value.command == ":WAV:POIN?"


def test_a_record_on_another_grid_is_an_error_or_a_counted_resample(caplog):
    """A record whose spacing is not 1 / sample_rate is refused, or with resample = true
    interpolated, counted and logged: never silently."""
    codes = np.arange(120) * 100
    slow = preamble(120, x_increment=1e-6)
    detector = scope()
    with expected_dialogue(detector, [*OPEN, *acquisition(120, slow, record(codes))]):
        detector.open()
        detector.arm(2)
        with pytest.raises(InstrumentError, match="1e-06 s apart, expected 120 points 5e-07"):
            detector.read()
    lenient = scope(resample=True)
    script = [*OPEN, *acquisition(120, slow, record(codes))] * 1
    with expected_dialogue(lenient, script), caplog.at_level(logging.WARNING):
        lenient.open()
        lenient.arm(2)
        y = lenient.read()
    np.testing.assert_allclose(y.ravel()[:4], 0.25 + np.array([0, 50, 100, 150]) * 1e-3)
    assert lenient.health()["resampled"] == 1 and "interpolating" in caplog.text


def test_preamble_fields():
    pre = Preamble.parse(preamble(6))
    assert (pre.format, pre.points, pre.x_increment, pre.y_increment, pre.y_origin) == \
        (1, 6, 5e-7, 1e-3, 0.25)
    with pytest.raises(ValueError):
        Preamble.parse("+1,+0")


def test_a_reply_that_is_not_a_block_is_an_error_naming_the_query():
    detector = scope()
    steps = acquisition(120, preamble(120), b"")
    script = [*OPEN, *steps[:-2], (":WAV:DATA?", "1,2,3")]
    with expected_dialogue(detector, script):
        detector.open()
        detector.arm(2)
        with pytest.raises(InstrumentError, match="definite-length block") as err:
            detector.read()
    assert err.value.command == ":WAV:DATA?" and not err.value.retryable


def test_a_trigger_that_never_comes_is_a_retryable_timeout():
    detector = scope(acquire_timeout_s=1e-9)  # the first look is already late
    script = [*OPEN, (":TIM:RANG 6e-05", None), (":SING", None), (":AER?", "1"),
              (":OPER:COND?", "+8")]
    with expected_dialogue(detector, script):
        detector.open()
        detector.arm(2)
        with pytest.raises(InstrumentError, match="no completion") as err:
            detector.read()
    assert err.value.retryable and err.value.command == ":OPER:COND?"


def test_pyvisa_sim_byte_record():
    detector = KeysightInfiniiVision("d", 50, "TCPIP::scope.sim::INSTR", library=SIM,
                                     format="BYTE")
    detector.open()
    assert float(detector.link.query(":CHAN1:RANG?")) == 8.0
    detector.arm(2)
    y = detector.read()
    assert int(detector.link.query(":WAV:POIN?")) == 100
    np.testing.assert_allclose(y, (np.arange(100) % 26 + 65).reshape(2, 50) * 0.01)
    detector.close()
