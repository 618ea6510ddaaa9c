"""Keysight InfiniiVision driver: set-up, arming, preamble scaling, blocks, resampling, faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError
from drivers.emulators.scripted import ScriptedVisa
from drivers.visa.keysight_scope import KeysightInfiniiVision, Preamble
from drivers.visa.scpi import format_block

SIM = str(Path(__file__).parents[2] / "drivers" / "emulators" / "instruments.yaml") + "@sim"
IDN = "KEYSIGHT TECHNOLOGIES,DSOX3024T,MY00000000,07.50.2021102830"
OK = '+0,"No error"'
PRE = "+1,+0,+6,+1,+5.000000E-07,+0.0E+00,+0,+1.000000E-03,+2.5E-01,+0"


def scripted(**replies) -> tuple[KeysightInfiniiVision, ScriptedVisa]:
    scope = KeysightInfiniiVision("osc.detector", 3, "TCPIP::scope::INSTR", sample_rate=2e6,
                                  v_range=4.0, trigger_level=0.5)
    fake = ScriptedVisa({"*IDN?": IDN, ":SYST:ERR?": OK, ":AER?": ["0", "1"],
                         ":OPER:COND?": ["+8", "+8", "+0"], **replies})
    scope.link.opener = lambda: fake
    return scope, fake


def test_open_sets_channel_trigger_timebase_and_signed_words():
    scope, fake = scripted()
    scope.open()
    assert fake.commands == [
        "*IDN?", "*CLS", ":STOP", ":CHAN1:DISP ON", ":CHAN1:RANG 4", ":CHAN1:OFFS 0",
        ":TRIG:MODE EDGE", ":TRIG:EDGE:SOUR EXTernal", ":TRIG:EDGE:SLOP POS",
        ":TRIG:EDGE:LEV 0.5", ":TRIG:SWE NORM", ":TIM:REF LEFT", ":TIM:POS 0",
        ":ACQ:TYPE NORM", ":WAV:SOUR CHAN1", ":WAV:FORM WORD", ":WAV:BYT LSBF", ":WAV:UNS 0",
        ":WAV:POIN:MODE RAW", ":SYST:ERR?"]


def test_arm_and_read_scale_the_word_block_to_volts_and_split_shots():
    codes = np.array([0, 1000, -1000, 250, -250, 32767], dtype="<i2")
    scope, fake = scripted(**{":WAV:PRE?": PRE,
                              ":WAV:DATA?": format_block(codes.tobytes()) + b"\n"})
    scope.open()
    fake.written.clear()
    scope.arm(2)
    y = scope.read()
    assert fake.commands == [":TIM:RANG 3e-06", ":WAV:POIN 6", ":SING", ":AER?", ":AER?",
                             ":OPER:COND?", ":OPER:COND?", ":OPER:COND?", ":WAV:PRE?",
                             ":WAV:DATA?"]
    np.testing.assert_allclose(y, [[0.25, 1.25, -0.75], [0.5, 0.0, 33.017]])


def test_a_record_on_another_time_grid_is_resampled():
    pre = "+1,+0,+4,+1,+1.000000E-06,+0.0E+00,+0,+1.000000E-03,+0.0E+00,+0"
    codes = np.array([0, 1000, 2000, 3000], dtype="<i2")
    scope, _ = scripted(**{":WAV:PRE?": pre, ":WAV:DATA?": format_block(codes.tobytes()) + b"\n"})
    scope.open()
    scope.arm(2)
    np.testing.assert_allclose(scope.read(), [[0.0, 0.5, 1.0], [1.5, 2.0, 2.5]])


def test_preamble_fields():
    pre = Preamble.parse(PRE)
    assert (pre.format, pre.points, pre.x_increment, pre.y_increment, pre.y_origin) == \
        (1, 6, 5e-7, 1e-3, 0.25)
    with pytest.raises(ValueError):
        Preamble.parse("+1,+0")


def test_a_reply_that_is_not_a_block_is_an_error_naming_the_query():
    scope, _ = scripted(**{":WAV:PRE?": PRE, ":WAV:DATA?": "1,2,3"})
    scope.open()
    scope.arm(2)
    with pytest.raises(InstrumentError, match="definite-length block") as err:
        scope.read()
    assert err.value.command == ":WAV:DATA?" and not err.value.retryable


def test_a_trigger_that_never_comes_is_a_retryable_timeout():
    scope, _ = scripted(**{":OPER:COND?": "+8"})
    scope.acquire_timeout_s = 0.05
    scope.open()
    scope.arm(1)
    with pytest.raises(InstrumentError, match="no completion") as err:
        scope.read()
    assert err.value.retryable and err.value.command == ":OPER:COND?"


def test_pyvisa_sim_byte_record():
    scope = KeysightInfiniiVision("d", 4, "TCPIP::scope.sim::INSTR", library=SIM, format="BYTE")
    scope.open()
    assert float(scope.link.query(":CHAN1:RANG?")) == 8.0
    scope.arm(2)
    assert int(scope.link.query(":WAV:POIN?")) == 8
    np.testing.assert_allclose(scope.read(), np.arange(65, 73).reshape(2, 4) * 0.01)
    scope.close()
