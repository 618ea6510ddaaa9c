"""The driver author's template (examples/driver_template.py) runs against the expected-dialogue
fake link: open, one measurement, a fault, the reopen after it, and a wrong instrument."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from drivers.base import InstrumentError, LimitError
from drivers.testing import SILENT, expected_dialogue
from drivers.visa.scpi import format_block

TEMPLATE = Path(__file__).parents[2] / "examples" / "driver_template.py"
OK = '+0,"No error"'
SOURCE_OPEN = [("*IDN?", "ACME,WS-1,0001,2.3"), ("*CLS", None), ("VOLT:LOW -1", None),
               ("VOLT:HIGH 1", None), ("RATE 2e+06", None), ("OUTP ON", None),
               ("SYST:ERR?", OK)]
DIGITISER_OPEN = [("*IDN?", "ACME,DG-2,0007,1.1"), ("*CLS", None), ("RATE 2e+06", None),
                  ("TRIG:SOUR EXT", None), ("SYST:ERR?", OK)]


@pytest.fixture(scope="module")
def template():
    spec = importlib.util.spec_from_file_location("driver_template", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pair(template):
    source = template.TemplateSource("rig.drive", 4, (-1.0, 1.0), "TCPIP::10.0.0.5::INSTR",
                                     sample_rate=2e6)
    digitiser = template.TemplateDigitiser("rig.detector", 4, "TCPIP::10.0.0.6::INSTR",
                                           sample_rate=2e6, acquire_timeout_s=1.0)
    return source, digitiser


def test_the_template_measures_one_batch(template):
    source, digitiser = pair(template)
    x = np.array([[0.0, 0.5, -0.5, 1.0], [0.25, 0.25, 0.25, 0.25]])
    trace = (2 * x).astype("<f4")
    upload = b"WAVE " + format_block(x.astype("<f4").tobytes())
    with expected_dialogue(source, [*SOURCE_OPEN, (upload, None), ("SYST:ERR?", OK),
                                    ("*TRG", None)]), \
            expected_dialogue(digitiser, [*DIGITISER_OPEN, ("ACQ:POIN 8", None),
                                          ("ARM", None), ("ACQ:DONE?", "0"),
                                          ("ACQ:DONE?", "1"),
                                          ("DATA?", format_block(trace.tobytes()) + b"\n")]):
        source.open()
        digitiser.open()
        digitiser.arm(2)
        source.output(x)
        y = digitiser.read()
        assert source.health() == {"open": True, "idn": "ACME,WS-1,0001,2.3",
                                   "address": "TCPIP::10.0.0.5::INSTR", "sample_rate": 2e6}
    np.testing.assert_allclose(y, 2 * x, rtol=1e-6)


def test_the_template_is_reopened_after_a_fault_and_refuses_unsafe_values(template):
    source, _ = pair(template)
    with expected_dialogue(source, [*SOURCE_OPEN, (b"WAVE #216" + bytes(16), None),
                                    ("SYST:ERR?", SILENT), *SOURCE_OPEN]) as dialogue:
        source.open()
        with pytest.raises(LimitError):
            source.output(np.full((1, 4), 1.5))  # nothing is sent
        with pytest.raises(InstrumentError) as err:
            source.output(np.zeros((1, 4)))
        assert err.value.retryable and err.value.command == "SYST:ERR?"
        source.close()
        source.open()
    assert dialogue.connections == 2


def test_the_template_refuses_another_instrument(template):
    _, digitiser = pair(template)
    with (
        expected_dialogue(digitiser, [("*IDN?", "ACME,WS-1,0001,2.3")]),
        pytest.raises(InstrumentError, match="not an instrument of this driver") as err,
    ):
        digitiser.open()
    assert not err.value.retryable and not digitiser.is_open


def test_the_guide_shows_the_template_as_it_is():
    guide = (Path(__file__).parents[2] / "docs" / "writing-a-driver.md").read_text()
    source = TEMPLATE.read_text()
    blocks = guide.split("```python\n")[1:]
    classes = [b.split("```")[0] for b in blocks if b.startswith("class ")]
    assert len(classes) == 2
    for block in classes:
        assert block in source, block.splitlines()[0]
