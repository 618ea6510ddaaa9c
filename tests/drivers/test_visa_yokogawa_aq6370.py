"""Yokogawa AQ6370 driver: set-up, sweep and wait, ASCII and REAL,32 traces, dBm to mW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError
from drivers.emulators.scripted import ScriptedVisa
from drivers.visa.scpi import format_block
from drivers.visa.yokogawa_aq6370 import YokogawaAQ6370

SIM = str(Path(__file__).parents[2] / "drivers" / "emulators" / "instruments.yaml") + "@sim"
IDN = "YOKOGAWA,AQ6374,91Q000000,01.05"
OK = '+0,"No error"'
LEVELS = np.linspace(-30, 0, 101)


def scripted(fmt: str = "ascii", trace: str | bytes | None = None):
    osa = YokogawaAQ6370("shg.detector", 101, "TCPIP::osa::INSTR", start_nm=395, stop_nm=405,
                         format=fmt)
    if trace is None:
        trace = ",".join(f"{v:+.6E}" for v in LEVELS) if fmt == "ascii" else \
            format_block(LEVELS.astype("<f4").tobytes()) + b"\n"
    fake = ScriptedVisa({"*IDN?": IDN, ":SYST:ERR?": OK, "*OPC?": "1", ":TRAC:Y? TRA": trace})
    osa.link.opener = lambda: fake
    return osa, fake


def test_open_sets_span_points_and_single_sweeps():
    osa, fake = scripted()
    osa.open()
    assert fake.commands == [
        "*IDN?", "*CLS", ":SENS:WAV:STAR 395.0000NM", ":SENS:WAV:STOP 405.0000NM",
        ":SENS:SWE:POIN 101", ":SENS:BAND:RES 0.1000NM", ":SENS:SENS MID",
        ":DISP:TRAC:Y1:SPAC LOG", ":INIT:SMOD SING", ":FORM:DATA ASCII", ":SYST:ERR?"]


@pytest.mark.parametrize("fmt", ["ascii", "real32"])
def test_each_shot_is_one_sweep_read_in_mw(fmt):
    osa, fake = scripted(fmt)
    osa.open()
    fake.written.clear()
    osa.arm(2)
    y = osa.read()
    assert fake.commands == [":INIT", "*OPC?", ":TRAC:Y? TRA"] * 2
    assert y.shape == (2, 101)
    np.testing.assert_allclose(y[0], 10 ** (LEVELS / 10), rtol=1e-5)


def test_a_trace_of_the_wrong_length_is_refused():
    osa, _ = scripted(trace="-10.0,-20.0")
    osa.open()
    osa.arm(1)
    with pytest.raises(InstrumentError, match="2 points, expected 101") as err:
        osa.read()
    assert err.value.command == ":TRAC:Y? TRA"


def test_the_sweep_points_must_be_the_osas():
    with pytest.raises(ValueError, match=r"101\.\.50001"):
        YokogawaAQ6370("o", 60, "TCPIP::osa::INSTR")


def test_pyvisa_sim_sweep():
    osa = YokogawaAQ6370("o", 101, "TCPIP::osa.sim::INSTR", library=SIM, start_nm=390,
                         stop_nm=410)
    osa.open()
    assert int(osa.link.query(":SENS:SWE:POIN?")) == 101
    assert float(osa.link.query(":SENS:WAV:STAR?")) == 390
    osa.arm(1)
    y = osa.read()
    np.testing.assert_allclose(y[0, [0, 100]], [1e-3, 1e-1], rtol=1e-6)
    osa.close()
