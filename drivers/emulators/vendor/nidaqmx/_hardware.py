"""What the fake NI-DAQmx runtime knows of the hardware: the devices (from the emulated
hardware, ``drivers.emulators.hardware.DaqCard``) and the trigger lines between tasks."""

from __future__ import annotations

import threading

from drivers.emulators.bus import Bus

from .error_codes import DAQmxErrors
from .errors import DaqError

_lock = threading.Lock()
_devices: dict[str, dict] = {}
#: terminal ("/Dev1/ao/StartTrigger") -> tasks armed and waiting for its next edge
_waiting: dict[str, list] = {}
#: device name -> the AO task holding the device's AO timing engine
_ao_engine: dict[str, object] = {}


def bus() -> Bus:
    return Bus.connect()


def devices() -> dict[str, dict]:
    with _lock:
        if not _devices:
            info = bus().call("nidaqmx", "info")
            _devices[info["name"]] = info
        return dict(_devices)


def device(name: str, task_name: str = "") -> dict:
    info = devices().get(name)
    if info is None:
        raise DaqError(f"Device identifier is invalid.\n\nDevice Specified: {name}",
                       DAQmxErrors.INVALID_DEVICE_ID, task_name)
    return info


def wait_for(terminal: str, task: object) -> None:
    with _lock:
        _waiting.setdefault(terminal, []).append(task)


def forget(task: object) -> None:
    with _lock:
        for tasks in _waiting.values():
            if task in tasks:
                tasks.remove(task)


def fire(terminal: str, t: float, rate: float) -> None:
    """An edge on ``terminal`` at device time ``t``: every task waiting on it starts then."""
    with _lock:
        tasks = _waiting.pop(terminal, [])
    for task in tasks:
        task._triggered(t, rate)


def reserve_ao(name: str, task: object, task_name: str) -> None:
    with _lock:
        holder = _ao_engine.get(name)
        if holder is not None and holder is not task:
            raise DaqError("The specified resource is reserved. The operation could not be "
                           "completed as specified.", DAQmxErrors.PAL_RESOURCE_RESERVED,
                           task_name)
        _ao_engine[name] = task


def release_ao(task: object) -> None:
    with _lock:
        for name, holder in list(_ao_engine.items()):
            if holder is task:
                del _ao_engine[name]
