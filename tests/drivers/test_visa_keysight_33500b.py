"""Keysight 33500B driver: exact commands, the DAC block, error replies, limits, reconnects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError, LimitError
from drivers.emulators.scripted import ScriptedVisa
from drivers.visa.keysight_33500b import Keysight33500B

SIM = str(Path(__file__).parents[2] / "drivers" / "emulators" / "instruments.yaml") + "@sim"
IDN = "Keysight Technologies,33522B,MY52600000,4.00-1.19-2.00-58-00"
OK = '+0,"No error"'


def scripted(**replies) -> tuple[Keysight33500B, ScriptedVisa]:
    awg = Keysight33500B("osc.drive", 8, (-1.0, 3.0), "TCPIP::awg::INSTR", sample_rate=2e6)
    fake = ScriptedVisa({"*IDN?": IDN, "SYST:ERR?": OK, **replies})
    awg.link.opener = lambda: fake
    return awg, fake


def test_open_sends_the_set_up_in_order():
    awg, fake = scripted()
    awg.open()
    assert fake.commands == [
        "*IDN?", "*CLS", "FORM:BORD SWAP", "OUTP1:LOAD INF", "SOUR1:VOLT:LIM:STAT OFF",
        "SOUR1:VOLT:OFFS 1", "SOUR1:VOLT 4", "SOUR1:VOLT:LIM:HIGH 3", "SOUR1:VOLT:LIM:LOW -1",
        "SOUR1:VOLT:LIM:STAT ON", "SOUR1:BURS:MODE TRIG", "SOUR1:BURS:NCYC 1",
        "TRIG1:SOUR BUS", "SOUR1:BURS:STAT ON", "OUTP1 ON", "SYST:ERR?"]
    assert awg.is_open and awg.health()["idn"] == IDN


def test_output_uploads_one_int16_block_of_all_shots_then_triggers():
    awg, fake = scripted()
    awg.open()
    fake.written.clear()
    patterns = np.array([[-1, 3, 1, 2, 0, -1, 3, 1], [1] * 8], dtype=float)
    awg.output(patterns)
    assert fake.commands == ["SOUR1:DATA:VOL:CLE", "SOUR1:DATA:ARB:DAC labd,", "SYST:ERR?",
                             "SOUR1:FUNC ARB", "SOUR1:FUNC:ARB labd",
                             "SOUR1:FUNC:ARB:SRAT 2000000", "SYST:ERR?", "*TRG"]
    block = fake.written[1]
    header = b"SOUR1:DATA:ARB:DAC labd,#232"
    assert block.startswith(header) and block.endswith(b"\n")
    codes = np.frombuffer(block[len(header):-1], "<i2")
    assert codes.tolist()[:8] == [-32767, 32767, 0, 16384, -16384, -32767, 32767, 0]
    assert codes.tolist()[8:] == [0] * 8


def test_an_error_after_the_upload_names_the_command_and_stops_before_the_trigger():
    awg, fake = scripted(**{"SYST:ERR?": [OK, '-222,"Data out of range"', OK]})
    awg.open()
    with pytest.raises(InstrumentError) as err:
        awg.output(np.zeros((1, 8)))
    assert err.value.command == "SOUR1:DATA:ARB:DAC labd,"
    assert "osc.drive" in str(err.value) and "-222 Data out of range" in str(err.value)
    assert not err.value.retryable
    assert "*TRG" not in fake.commands


def test_out_of_range_patterns_never_reach_the_instrument():
    awg, fake = scripted()
    awg.open()
    sent = len(fake.written)
    with pytest.raises(LimitError):
        awg.output(np.full((1, 8), 3.5))
    with pytest.raises(LimitError):
        awg.output(np.zeros((awg.max_shots + 1, 8)))
    assert len(fake.written) == sent


def test_limits_must_fit_the_output_into_its_load():
    with pytest.raises(ValueError, match="5 V into load 50"):
        Keysight33500B("d", 8, (-6, 1), "TCPIP::awg::INSTR", load="50")
    Keysight33500B("d", 8, (-6, 1), "TCPIP::awg::INSTR", load="INF")
    with pytest.raises(ValueError, match="10 V"):
        Keysight33500B("d", 8, (-1, 11), "TCPIP::awg::INSTR")


def test_a_silent_instrument_is_a_retryable_fault_and_open_reconnects():
    awg, fake = scripted()
    awg.open()
    fake.replies.pop("SYST:ERR?")
    with pytest.raises(InstrumentError) as err:
        awg.output(np.zeros((1, 8)))
    assert err.value.retryable and err.value.command == "SYST:ERR?"
    assert fake.closed and not awg.link.is_open
    fresh = ScriptedVisa({"*IDN?": IDN, "SYST:ERR?": OK})
    awg.link.opener = lambda: fresh
    awg.close()
    awg.open()
    awg.output(np.zeros((1, 8)))
    assert fresh.commands[-1] == "*TRG"


def test_pyvisa_sim_holds_the_settings_the_driver_made():
    awg = Keysight33500B("d", 16, (-0.5, 1.5), "TCPIP::awg.sim::INSTR", library=SIM)
    awg.open()
    assert float(awg.link.query("SOUR1:VOLT?")) == 2.0
    assert float(awg.link.query("SOUR1:VOLT:OFFS?")) == 0.5
    assert float(awg.link.query("SOUR1:VOLT:LIM:HIGH?")) == 1.5
    assert awg.link.query("OUTP1:LOAD?") == "INF"
    # pyvisa-sim takes text only: a block of zero codes lands in its error queue
    with pytest.raises(InstrumentError, match="-113") as err:
        awg.output(np.full((1, 16), 0.5))
    assert err.value.command == "SOUR1:DATA:ARB:DAC labd,"
    awg.close()


def test_pyvisa_sim_refuses_another_instrument():
    awg = Keysight33500B("d", 16, (-1, 1), "TCPIP::imposter.sim::INSTR", library=SIM)
    with pytest.raises(InstrumentError, match="DG1062Z") as err:
        awg.open()
    assert not err.value.retryable and err.value.command == "*IDN?"
