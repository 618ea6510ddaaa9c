"""The ``nidaqmx.constants`` this fake supports, with NI-DAQmx's own values
(nidaqmx-python ``generated/nidaqmx/constants.py``)."""

from enum import Enum

READ_ALL_AVAILABLE = -1
WAIT_INFINITELY = -1.0


class AcquisitionType(Enum):
    FINITE = 10178
    CONTINUOUS = 10123
    HW_TIMED_SINGLE_POINT = 12522


class Edge(Enum):
    RISING = 10280
    FALLING = 10171


class TerminalConfiguration(Enum):
    RSE = 10083
    NRSE = 10078
    DIFF = 10106
    PSEUDO_DIFF = 12529
    DEFAULT = -1


class VoltageUnits(Enum):
    VOLTS = 10348
    FROM_CUSTOM_SCALE = 10065
    FROM_TEDS = 12516


class TaskMode(Enum):
    TASK_START = 0
    TASK_STOP = 1
    TASK_VERIFY = 2
    TASK_COMMIT = 3
    TASK_RESERVE = 4
    TASK_UNRESERVE = 5
    TASK_ABORT = 6
