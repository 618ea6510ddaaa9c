"""Keysight 33500B driver against expected dialogues: the set-up (Sync on the played channel,
the arb filter, the instrument's own sample-rate bounds: issue 17 defects 6 and 7), the DAC
block, error replies, limits, reconnects; and against pyvisa-sim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError, LimitError
from drivers.testing import SILENT, expected_dialogue
from drivers.visa.keysight_33500b import Keysight33500B
from drivers.visa.scpi import format_block

SIM = str(Path(__file__).parents[2] / "drivers" / "emulators" / "instruments.yaml") + "@sim"
IDN = "Keysight Technologies,33522B,MY52600000,4.00-1.19-2.00-58-00"
IDN_ONE = "Keysight Technologies,33511B,MY52600001,4.00-1.19-2.00-58-00"
OK = '+0,"No error"'


def awg(**options) -> Keysight33500B:
    return Keysight33500B("osc.drive", 8, (-1.0, 3.0), "TCPIP::awg::INSTR",
                          **{"sample_rate": 2e6, **options})


def setup(s: int = 1, sync_source: bool = True, arb_filter: str = "OFF") -> list:
    return [("*CLS", None), ("FORM:BORD SWAP", None), (f"OUTP{s}:LOAD INF", None),
            (f"SOUR{s}:VOLT:LIM:STAT OFF", None), (f"SOUR{s}:VOLT:OFFS 1", None),
            (f"SOUR{s}:VOLT 4", None), (f"SOUR{s}:VOLT:LIM:HIGH 3", None),
            (f"SOUR{s}:VOLT:LIM:LOW -1", None), (f"SOUR{s}:VOLT:LIM:STAT ON", None),
            (f"SOUR{s}:BURS:MODE TRIG", None), (f"SOUR{s}:BURS:NCYC 1", None),
            (f"TRIG{s}:SOUR BUS", None), (f"SOUR{s}:BURS:STAT ON", None),
            (f"SOUR{s}:FUNC:ARB:FILT {arb_filter}", None),
            *([(f"OUTP:SYNC:SOUR CH{s}", None)] if sync_source else []),
            ("OUTP:SYNC:MODE NORM", None), ("OUTP:SYNC:POL NORM", None), ("OUTP:SYNC ON", None),
            (f"OUTP{s} ON", None)]


def opening(s: int = 1, idn: str = IDN, bounds: tuple[str, str] = ("+1.0E-06", "+2.5E+08"),
            **kw) -> list:
    return [("*IDN?", idn), *setup(s, **kw), ("SYST:ERR?", OK),
            (f"SOUR{s}:FUNC:ARB:SRAT? MIN", bounds[0]), (f"SOUR{s}:FUNC:ARB:SRAT? MAX", bounds[1])]


def playing(codes: np.ndarray, s: int = 1, errors: tuple[str, str] = (OK, OK)) -> list:
    upload = f"SOUR{s}:DATA:ARB:DAC labd,".encode() + format_block(codes.astype("<i2").tobytes())
    return [(f"SOUR{s}:DATA:VOL:CLE", None), (upload, None), ("SYST:ERR?", errors[0]),
            (f"SOUR{s}:FUNC ARB", None), (f"SOUR{s}:FUNC:ARB labd", None),
            (f"SOUR{s}:FUNC:ARB:SRAT 2000000", None), ("SYST:ERR?", errors[1]), ("*TRG", None)]


def test_open_sets_output_limits_burst_filter_and_sync():
    drive = awg()
    with expected_dialogue(drive, opening()):
        drive.open()
        assert drive.is_open and drive.health()["idn"] == IDN


def test_sync_follows_the_channel_played():
    """Defect 6: Sync is switched on and, on a two-channel model, taken from the channel
    that plays (it would otherwise follow channel 1 while channel 2 plays)."""
    drive = awg(source=2)
    with expected_dialogue(drive, opening(2)):
        drive.open()
    single = awg()
    with expected_dialogue(single, opening(1, IDN_ONE, sync_source=False)):
        single.open()  # one channel: no OUTP:SYNC:SOUR (QCoDeS adds it for two channels only)
    wrong = awg(source=2)
    with expected_dialogue(wrong, [("*IDN?", IDN_ONE)]), \
            pytest.raises(InstrumentError, match="has one channel") as err:
        wrong.open()
    assert not err.value.retryable


@pytest.mark.parametrize(("option", "sent"), [("OFF", "OFF"), ("step", "STEP"),
                                              ("NORMAL", "NORM")])
def test_the_arb_filter_is_set(option, sent):
    """Defect 7a: the arb filter is set (OFF by default: held samples stay held)."""
    drive = awg(arb_filter=option)
    with expected_dialogue(drive, opening(arb_filter=sent)):
        drive.open()
    with pytest.raises(ValueError, match="arb_filter"):
        awg(arb_filter="SMOOTH")


def test_the_sample_rate_bounds_are_the_instruments():
    """Defect 7b: the family spans 1 uSa/s..1 GSa/s; the model's own bounds come from the
    instrument, and a rate outside them fails the open naming them."""
    assert awg(sample_rate=1e-6).sample_rate == 1e-6  # below the old 1 S/s floor
    assert awg(sample_rate=500e6).sample_rate == 500e6  # a 33600A rate
    with pytest.raises(ValueError, match=r"1 uSa/s\.\.1 GSa/s"):
        awg(sample_rate=2e9)
    drive = awg(sample_rate=500e6)
    with expected_dialogue(drive, opening()), \
            pytest.raises(InstrumentError, match=r"5e\+08 Sa/s is outside this instrument's "
                                                 r"1e-06\.\.2\.5e\+08") as err:
        drive.open()
    assert not err.value.retryable and not drive.is_open


def test_output_uploads_one_int16_block_of_all_shots_then_triggers():
    drive = awg()
    patterns = np.array([[-1, 3, 1, 2, 0, -1, 3, 1], [1] * 8], dtype=float)
    codes = [-32767, 32767, 0, 16384, -16384, -32767, 32767, 0] + [0] * 8
    with expected_dialogue(drive, [*opening(), *playing(np.array(codes))]):
        drive.open()
        drive.output(patterns)


def test_an_error_after_the_upload_names_the_command_and_stops_before_the_trigger():
    drive = awg()
    script = [*opening(), *playing(np.zeros(8), errors=('-222,"Data out of range"', OK))[:3],
              ("SYST:ERR?", OK)]
    with expected_dialogue(drive, script):
        drive.open()
        with pytest.raises(InstrumentError) as err:
            drive.output(np.ones((1, 8)))
    assert err.value.command == "SOUR1:DATA:ARB:DAC labd,"
    assert "osc.drive" in str(err.value) and "-222 Data out of range" in str(err.value)
    assert not err.value.retryable


def test_out_of_range_patterns_never_reach_the_instrument():
    drive = awg()
    with expected_dialogue(drive, opening()):
        drive.open()
        with pytest.raises(LimitError):
            drive.output(np.full((1, 8), 3.5))
        with pytest.raises(LimitError):
            drive.output(np.zeros((drive.max_shots + 1, 8)))


def test_limits_must_fit_the_output_into_its_load():
    with pytest.raises(ValueError, match="5 V into load 50"):
        Keysight33500B("d", 8, (-6, 1), "TCPIP::awg::INSTR", load="50")
    Keysight33500B("d", 8, (-6, 1), "TCPIP::awg::INSTR", load="INF")
    with pytest.raises(ValueError, match="10 V"):
        Keysight33500B("d", 8, (-1, 11), "TCPIP::awg::INSTR")


def test_a_silent_instrument_is_a_retryable_fault_and_open_reconnects():
    drive = awg()
    codes = np.full(8, 2)  # 0.1 mV above the 1 V offset: (0.0001 V) * 65534 / 4 V
    script = [*opening(), *playing(codes)[:2], ("SYST:ERR?", SILENT),
              *opening(), *playing(codes)]
    with expected_dialogue(drive, script) as dialogue:
        drive.open()
        with pytest.raises(InstrumentError) as err:
            drive.output(np.full((1, 8), 1.0001))
        assert err.value.retryable and err.value.command == "SYST:ERR?"
        assert not drive.link.is_open and not drive.health()["open"]
        drive.open()  # the link dropped: open() reconnects, re-identifies, re-configures
        drive.output(np.full((1, 8), 1.0001))
    assert dialogue.connections == 2


def test_pyvisa_sim_holds_the_settings_the_driver_made():
    drive = Keysight33500B("d", 16, (-0.5, 1.5), "TCPIP::awg.sim::INSTR", library=SIM)
    drive.open()
    assert float(drive.link.query("SOUR1:VOLT?")) == 2.0
    assert float(drive.link.query("SOUR1:VOLT:OFFS?")) == 0.5
    assert float(drive.link.query("SOUR1:VOLT:LIM:HIGH?")) == 1.5
    assert drive.link.query("OUTP1:LOAD?") == "INF"
    # pyvisa-sim takes text only: a block of zero codes lands in its error queue
    with pytest.raises(InstrumentError, match="-113") as err:
        drive.output(np.full((1, 16), 0.5))
    assert err.value.command == "SOUR1:DATA:ARB:DAC labd,"
    drive.close()


def test_pyvisa_sim_refuses_another_instrument():
    drive = Keysight33500B("d", 16, (-1, 1), "TCPIP::imposter.sim::INSTR", library=SIM)
    with pytest.raises(InstrumentError, match="DG1062Z") as err:
        drive.open()
    assert not err.value.retryable and err.value.command == "*IDN?"
