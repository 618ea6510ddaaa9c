"""Yokogawa AQ6370 driver against expected dialogues: the LAN log-in, CR LF replies, timeouts
for automatic offsets and slow sensitivities, the sweep end from the status register, the
written trace in dBm, and dBm to mW (issue 17, defects 1-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError
from drivers.testing import SILENT, expected_dialogue
from drivers.visa.scpi import format_block
from drivers.visa.yokogawa_aq6370 import YokogawaAQ6370

SIM = str(Path(__file__).parents[2] / "drivers" / "emulators" / "instruments.yaml") + "@sim"
LAN = "TCPIP::192.168.1.40::10001::SOCKET"
IDN = "YOKOGAWA,AQ6374,91Q000000,01.05"
OK = '+0,"No error"'
LEVELS = np.linspace(-30, 0, 101)
LOG_IN = [('OPEN "anonymous"', "AUTHENTICATE CRAM-MD5."), (" ", "ready")]
SETUP = [("*CLS", None), (":SENS:WAV:STAR 395.0000NM", None),
         (":SENS:WAV:STOP 405.0000NM", None), (":SENS:SWE:POIN 101", None),
         (":SENS:BAND:RES 0.1000NM", None), (":SENS:SENS MID", None),
         (":DISP:TRAC:Y1:SPAC LOG", None), (":DISP:TRAC:Y1:UNIT DBM", None),
         (":INIT:SMOD SING", None), (":TRAC:ATTR:TRA WRIT", None), (":TRAC:STAT:TRA ON", None),
         (":TRAC:ACT TRA", None)]


def osa(resource: str = LAN, fmt: str = "ascii", **options) -> YokogawaAQ6370:
    return YokogawaAQ6370("shg.detector", 101, resource, start_nm=395, stop_nm=405,
                          format=fmt, poll_s=0.0, **options)


def opening(fmt: str = "ascii", log_in: bool = True) -> list:
    form = ":FORM:DATA ASCII" if fmt == "ascii" else ":FORM:DATA REAL,32"
    return [*(LOG_IN if log_in else []), ("*IDN?", IDN), *SETUP, (form, None),
            (":SYST:ERR?", OK)]


def sweep(reply, polls: int = 1) -> list:
    """One sweep: clear, start, ``polls`` status reads until bit 0, the trace."""
    return [("*CLS", None), (":INIT", None), *[(":STAT:OPER:EVEN?", "0")] * (polls - 1),
            (":STAT:OPER:EVEN?", "1"), (":TRAC:Y? TRA", reply)]


def ascii_trace(levels: np.ndarray) -> str:
    return ",".join(f"{v:+.6E}" for v in levels)


def test_over_lan_it_logs_in_before_anything_else():
    """Defect 1: the OSA's socket answers nothing until OPEN "user" and the password."""
    detector = osa()
    with expected_dialogue(detector, opening(), end="\r\n"):
        detector.open()
        assert detector.health()["idn"] == IDN


def test_a_named_user_sends_its_password_and_a_refusal_is_not_retryable():
    detector = osa(user="labd", password="s3cret")
    script = [('OPEN "labd"', "AUTHENTICATE CRAM-MD5."), ("s3cret", "error")]
    with expected_dialogue(detector, script, end="\r\n"), \
            pytest.raises(InstrumentError, match="log-in refused for user 'labd'") as err:
        detector.open()
    assert not err.value.retryable and not detector.is_open


def test_gpib_has_no_log_in():
    detector = osa("GPIB0::1::INSTR")
    with expected_dialogue(detector, opening(log_in=False)):
        detector.open()


def test_a_block_ending_in_cr_lf_leaves_nothing_for_the_next_reply():
    """Defect 2, in the link: after a REAL,32 block the LF of its CR LF is consumed, so the
    next query reads its own reply."""
    detector = osa()
    block = format_block(LEVELS.astype("<f4").tobytes())
    with expected_dialogue(detector.link, [(":TRAC:Y? TRA", block + b"\r\n"), ("*OPC?", "1")],
                           end="\r\n"):
        detector.link.open()
        assert np.frombuffer(detector.link.query_block(":TRAC:Y? TRA"), "<f4").size == 101
        assert detector.link.query("*OPC?") == "1"


@pytest.mark.parametrize("fmt", ["ascii", "real32"])
def test_cr_lf_replies_and_two_sweeps_in_a_row(fmt):
    """Defect 2: replies end in CR LF; after a REAL,32 block the LF must not be left over as
    the answer to the next query."""
    detector = osa(fmt=fmt)
    first, second = LEVELS, LEVELS[::-1]
    if fmt == "ascii":
        replies = [ascii_trace(first), ascii_trace(second)]
    else:
        replies = [format_block(v.astype("<f4").tobytes()) + b"\r\n" for v in (first, second)]
    script = [*opening(fmt), *sweep(replies[0], polls=3), *sweep(replies[1])]
    with expected_dialogue(detector, script, end="\r\n"):
        detector.open()
        detector.arm(2)
        y = detector.read()
    np.testing.assert_allclose(y, 10 ** (np.stack([first, second]) / 10), rtol=1e-5)


def test_timeouts_cover_an_automatic_offset_and_slow_sensitivities():
    """Defect 3: 30 s per query (an automatic offset holds the OSA ~30 s); HIGH2/HIGH3 sweeps
    get far more than 60 s."""
    assert osa().link.timeout_s >= 30
    limits = {s: osa(sensitivity=s).sweep_timeout_s for s in ("MID", "HIGH2", "HIGH3")}
    assert limits["MID"] >= 60 and limits["HIGH2"] > 60 and limits["HIGH3"] > 200
    wide = YokogawaAQ6370("o", 20001, LAN, sensitivity="HIGH3")
    assert wide.sweep_timeout_s > 20 * limits["HIGH3"] / 2
    assert osa(sweep_timeout_s=5.0).sweep_timeout_s == 5.0


def test_the_sweep_end_is_bit_0_of_the_operation_event_register():
    """Defect 4: a sweep clears the event register, starts, and polls :STAT:OPER:EVEN? until
    bit 0 is set (an odd value with other bits is finished too), not *OPC?."""
    detector = osa()
    script = [("*CLS", None), (":INIT", None), (":STAT:OPER:EVEN?", "0"),
              (":STAT:OPER:EVEN?", "16"), (":STAT:OPER:EVEN?", "17"),
              (":TRAC:Y? TRA", ascii_trace(LEVELS))]
    with expected_dialogue(detector.link, script, end="\r\n"):
        detector.link.open()
        np.testing.assert_allclose(detector.sweep(), 10 ** (LEVELS / 10), rtol=1e-6)


def test_a_sweep_that_never_ends_is_a_retryable_timeout():
    detector = osa(sweep_timeout_s=1e-9)  # the first poll is already late
    script = [*opening(), ("*CLS", None), (":INIT", None), (":STAT:OPER:EVEN?", "0")]
    with expected_dialogue(detector, script, end="\r\n"):
        detector.open()
        detector.arm(1)
        with pytest.raises(InstrumentError, match="no completion") as err:
            detector.read()
    assert err.value.retryable and err.value.command == ":STAT:OPER:EVEN?"


def test_the_read_trace_is_the_written_active_one_in_dbm():
    """Defect 5: the trace read is set to WRITE, shown and active, and levels are dBm (not
    dBm/nm or W, whatever the display was left on); another trace can be chosen."""
    detector = osa("GPIB0::1::INSTR")
    with expected_dialogue(detector, opening(log_in=False)):
        detector.open()
    assert {":DISP:TRAC:Y1:UNIT DBM", ":TRAC:ATTR:TRA WRIT"} <= {c for c, _ in SETUP}
    other = osa(trace="TRC")
    setup = [(c.replace(" TRA", " TRC").replace(":TRA ", ":TRC "), r) for c, r in SETUP]
    script = [*LOG_IN, ("*IDN?", IDN), *setup, (":FORM:DATA ASCII", None), (":SYST:ERR?", OK),
              ("*CLS", None), (":INIT", None), (":STAT:OPER:EVEN?", "1"),
              (":TRAC:Y? TRC", ascii_trace(LEVELS))]
    with expected_dialogue(other, script, end="\r\n"):
        other.open()
        other.arm(1)
        np.testing.assert_allclose(other.read()[0], 10 ** (LEVELS / 10), rtol=1e-6)


def test_a_trace_of_the_wrong_length_or_unreadable_is_refused():
    detector = osa()
    script = [*opening(), *sweep("-10.0,-20.0"), *sweep("-10.0,oops")]
    with expected_dialogue(detector, script, end="\r\n"):
        detector.open()
        detector.arm(1)
        with pytest.raises(InstrumentError, match="2 points, expected 101") as err:
            detector.read()
        assert err.value.command == ":TRAC:Y? TRA" and not err.value.retryable
        detector.arm(1)
        with pytest.raises(InstrumentError, match="unreadable trace"):
            detector.read()


def test_silence_before_the_log_in_is_a_retryable_fault():
    detector = osa()
    with expected_dialogue(detector, [('OPEN "anonymous"', SILENT)], end="\r\n"), \
            pytest.raises(InstrumentError) as err:
        detector.open()
    assert err.value.retryable and not detector.link.is_open


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"101\.\.50001"):
        YokogawaAQ6370("o", 60, LAN)
    with pytest.raises(ValueError, match="trace must be one of"):
        osa(trace="TRZ")
    with pytest.raises(ValueError, match="sensitivity"):
        osa(sensitivity="FAST")


def test_pyvisa_sim_sweep():
    detector = YokogawaAQ6370("o", 101, "TCPIP::osa.sim::INSTR", library=SIM, start_nm=390,
                              stop_nm=410)
    detector.open()
    assert int(detector.link.query(":SENS:SWE:POIN?")) == 101
    assert float(detector.link.query(":SENS:WAV:STAR?")) == 390
    detector.arm(1)
    y = detector.read()
    np.testing.assert_allclose(y[0, [0, 100]], [1e-3, 1e-1], rtol=1e-6)
    detector.close()
