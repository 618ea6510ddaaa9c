"""A fake of the NI-DAQmx Python API (``nidaqmx`` on PyPI, ni/nidaqmx-python) for finite,
hardware-timed analog output and input on one X Series card, with emulated hardware behind it
(``drivers.emulators.hardware.DaqCard``, reached over ``drivers.emulators.bus``).

Follows nidaqmx-python's ``Task`` (``generated/nidaqmx/task/_task.py``) and the NI-DAQmx
behaviour its component tests and examples show: tasks are started and stopped explicitly, a
started AI task waits for its start trigger, an AO task holds the card's AO timing engine until
it is stopped, writes of many samples do not start a task by default, reads past the end of a
finite acquisition return what there is, timeouts raise ``DaqReadError`` with the samples read.
Not supported (raises ``NotImplementedError``): continuous or single-point timing, more than
one channel per task, counters, digital lines, waveform reads and writes, events.
"""

from . import constants, errors, system
from .errors import DaqError, DaqReadError, DaqResourceWarning, DaqWarning, DaqWriteError
from .task import Task

__version__ = "1.7.0+labd.fake"

__all__ = ["DaqError", "DaqReadError", "DaqResourceWarning", "DaqWarning", "DaqWriteError",
           "Task", "constants", "errors", "system"]
