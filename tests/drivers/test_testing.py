"""The expected-dialogue fake link (``drivers.testing``): it passes a driver that speaks as
scripted and fails, with a message naming the step, every other one."""

from __future__ import annotations

import re

import numpy as np
import pytest

from drivers.base import Detector, InstrumentError
from drivers.serial.line import LineLink
from drivers.testing import SILENT, DialogueError, expected_dialogue
from drivers.visa.scpi import ScpiInstrument, ScpiLink, format_block

IDN = "ACME,METER-2,0042,1.0"
OK = '+0,"No error"'


class Meter(ScpiInstrument, Detector):
    idn_pattern = r"^ACME,METER"

    def __init__(self) -> None:
        super().__init__("bench.meter", 3)
        self.link = ScpiLink(self.name, "TCPIP::10.0.0.9::5025::SOCKET", timeout_s=0.1)

    def setup(self) -> list[str]:
        return ["*CLS", "FORM REAL"]

    def read(self) -> np.ndarray:
        shots = self.armed("READ?")
        data = np.frombuffer(self.link.query_block("READ?"), "<f4")
        return data.reshape(shots, self.samples)


OPEN = [("*IDN?", IDN), ("*CLS", None), ("FORM REAL", None), ("SYST:ERR?", OK)]
BLOCK = format_block(np.arange(3, dtype="<f4").tobytes())


def test_a_driver_that_speaks_as_scripted_passes():
    meter = Meter()
    with expected_dialogue(meter, [*OPEN, ("READ?", BLOCK + b"\r\n")]) as dialogue:
        meter.open()
        meter.arm(1)
        assert meter.read().tolist() == [[0.0, 1.0, 2.0]]
    assert dialogue.connections == 1 and dialogue.sent[0] == b"*IDN?\n"


def test_another_command_fails_naming_the_step_and_both_messages():
    meter = Meter()
    script = [("*IDN?", IDN), ("*CLS", None), ("FORM ASCII", None), ("SYST:ERR?", OK)]
    with (
        pytest.raises(DialogueError,
                      match=r"step 3 of 4: sent b'FORM REAL\\n', expected 'FORM ASCII'"),
        expected_dialogue(meter, script),
    ):
        meter.open()


def test_a_mismatch_the_driver_turned_into_an_instrument_error_still_fails_the_test():
    meter = Meter()
    with (
        pytest.raises(DialogueError, match="expected 'FORM ASCII'"),
        expected_dialogue(meter, [("*IDN?", IDN), ("*CLS", None), ("FORM ASCII", None)]),
        pytest.raises(InstrumentError),  # what the link makes of a transport error
    ):
        meter.open()


def test_steps_never_reached_fail():
    meter = Meter()
    with (
        pytest.raises(DialogueError,
                      match=r"1 expected step\(s\) never happened, from step 5: 'READ\?'"),
        expected_dialogue(meter, [*OPEN, ("READ?", BLOCK + b"\n")]),
    ):
        meter.open()


def test_messages_after_the_script_and_unread_replies_fail():
    meter = Meter()
    with (
        pytest.raises(DialogueError, match="after the expected dialogue ended"),
        expected_dialogue(meter, OPEN[:1]),
    ):
        meter.open()
    with (
        pytest.raises(DialogueError, match=r"never read by the driver: b'\\n'"),
        expected_dialogue(meter.link, [("READ?", BLOCK + b"\n\n")]),
    ):
        meter.link.open()
        meter.link.query_block("READ?")


def test_a_read_with_no_reply_due_fails_and_silent_is_a_retryable_timeout():
    meter = Meter()
    with (
        pytest.raises(DialogueError, match="no reply is due"),
        expected_dialogue(meter, [("*IDN?", None)]),
    ):
        meter.open()
    with (
        expected_dialogue(meter, [("*IDN?", SILENT)]),
        pytest.raises(InstrumentError, match="Timeout") as err,
    ):
        meter.open()
    assert err.value.retryable and err.value.command == "*IDN?"


def test_regular_expressions_and_reconnects():
    meter = Meter()
    script = [("*IDN?", SILENT), ("*IDN?", IDN), ("*CLS", None),
              (re.compile(r"FORM (REAL|ASCII)"), None), ("SYST:ERR?", OK)]
    with expected_dialogue(meter, script) as dialogue:
        with pytest.raises(InstrumentError):  # the second open is outside it
            meter.open()
        meter.open()
    assert dialogue.connections == 2


def test_the_serial_line_link_against_a_dialogue_with_a_binary_payload():
    link = LineLink("board", "/dev/ttyACM9", timeout_s=0.1)
    with expected_dialogue(link, [(b"WAVE 2\n\x0a\x00\x00\x0a", "OK"), ("RUN 2", SILENT)]):
        link.open()
        link.command("WAVE 2", b"\x0a\x00\x00\x0a")
        with pytest.raises(InstrumentError, match="no reply") as err:
            link.query("RUN 2")
    assert err.value.retryable and not link.is_open
