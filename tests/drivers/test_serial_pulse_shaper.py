"""Serial pulse shaper: the line protocol against the pty emulator, errors, timeouts, reconnect."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import InstrumentError, LimitError
from drivers.emulators.pty_server import PtyServer, ShaperModel
from drivers.emulators.rig import load_rig
from drivers.serial.pulse_shaper import SerialPulseShaper


class RecordingShaper(ShaperModel):
    def __init__(self, rig):
        super().__init__(rig)
        self.lines: list[str] = []

    def answer(self, head, args, payload):
        self.lines.append(f"{head} {args}".strip())
        return super().answer(head, args, payload)


@pytest.fixture
def shaper():
    rig = load_rig("shg")
    server = PtyServer(RecordingShaper(rig))
    drive = SerialPulseShaper("shg.drive", rig.channels, (0.0, 1.0), server.path, timeout_s=0.3)
    yield drive, server, rig
    drive.close()
    server.close()


def test_open_identifies_and_checks_the_channel_count(shaper):
    drive, server, _ = shaper
    drive.open()
    assert drive.health()["idn"].startswith("labd-emulator,PULSESHAPER")
    assert server.model.lines == ["CHAN?"]


def test_a_mask_is_sent_as_16_bit_codes_and_held(shaper):
    drive, server, rig = shaper
    drive.open()
    mask = np.linspace(0, 1, rig.channels)[None, :]
    drive.output(mask)
    codes = np.round(mask[0] * 65535).astype(int)
    assert server.model.lines[-1] == f"MASK {rig.channels} " + ",".join(map(str, codes))
    np.testing.assert_allclose(rig.mask, codes / 65535)


def test_one_pattern_at_a_time_and_within_0_1(shaper):
    drive, _, rig = shaper
    drive.open()
    with pytest.raises(LimitError, match="at most 1"):
        drive.output(np.zeros((2, rig.channels)))
    with pytest.raises(LimitError):
        drive.output(np.full((1, rig.channels), 1.01))
    with pytest.raises(ValueError, match=r"0\.\.1"):
        SerialPulseShaper("s", 4, (0.0, 2.0), "/dev/null")


def test_a_channel_count_mismatch_is_refused(shaper):
    _, server, rig = shaper
    wrong = SerialPulseShaper("s", rig.channels + 1, (0.0, 1.0), server.path, timeout_s=0.3)
    with pytest.raises(InstrumentError, match="channels") as err:
        wrong.open()
    assert not err.value.retryable and err.value.command == "CHAN?"


def test_a_device_error_reply_names_the_command(shaper):
    drive, _, _ = shaper
    drive.open()
    with pytest.raises(InstrumentError, match="device error 2") as err:
        drive.link.command("MASK 3 1,2,3")
    assert err.value.command == "MASK 3 1,2,3" and not err.value.retryable


def test_silence_is_a_retryable_timeout_and_reopen_recovers(shaper):
    drive, server, rig = shaper
    drive.open()
    server.muted = True
    with pytest.raises(InstrumentError, match="no reply") as err:
        drive.output(np.zeros((1, rig.channels)))
    assert err.value.retryable
    drive.close()
    with pytest.raises(InstrumentError):
        drive.open()
    server.muted = False
    drive.close()
    drive.open()
    drive.output(np.full((1, rig.channels), 0.5))
    np.testing.assert_allclose(rig.mask, 32768 / 65535)
