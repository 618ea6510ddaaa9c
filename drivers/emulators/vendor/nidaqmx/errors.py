"""NI-DAQmx error classes, as nidaqmx-python defines them (``generated/nidaqmx/errors.py``):
``DaqError(message, error_code, task_name="")`` appends the task name and the status code to
the message; reads raise ``DaqReadError`` (with ``samps_per_chan_read``), writes
``DaqWriteError`` (with ``samps_per_chan_written``)."""

from .error_codes import DAQmxErrors, DAQmxWarnings

__all__ = ["DaqError", "DaqReadError", "DaqResourceWarning", "DaqWarning", "DaqWriteError"]


class Error(Exception):
    """Base error class for module."""


class DaqNotFoundError(Error):
    """Error raised when NI-DAQmx driver is not installed."""


class DaqNotSupportedError(Error):
    """Error raised when DAQmx is not supported on this platform."""


class DaqError(Error):
    def __init__(self, message, error_code, task_name=""):
        self._error_code = int(error_code)
        try:
            self._error_type = DAQmxErrors(self._error_code)
        except ValueError:
            self._error_type = DAQmxErrors.UNKNOWN
        if task_name:
            message = f"{message}\n\nTask Name: {task_name}"
        if str(self._error_code) not in message:
            message = f"{message}\n\nStatus Code: {self._error_code}"
        super().__init__(message)

    @property
    def error_code(self):
        return self._error_code

    @property
    def error_type(self):
        return self._error_type


class DaqReadError(DaqError):
    def __init__(self, message, error_code, samps_per_chan_read, task_name=""):
        super().__init__(message, error_code, task_name)
        self._samps_per_chan_read = samps_per_chan_read

    @property
    def samps_per_chan_read(self):
        return self._samps_per_chan_read


class DaqWriteError(DaqError):
    def __init__(self, message, error_code, samps_per_chan_written, task_name=""):
        super().__init__(message, error_code, task_name)
        self._samps_per_chan_written = samps_per_chan_written

    @property
    def samps_per_chan_written(self):
        return self._samps_per_chan_written


class DaqWarning(Warning):
    def __init__(self, message, error_code):
        super().__init__(f"\nWarning {error_code} occurred.\n\n{message}")
        self._error_code = int(error_code)
        try:
            self._error_type = DAQmxWarnings(self._error_code)
        except ValueError:
            self._error_type = DAQmxWarnings.UNKNOWN

    @property
    def error_code(self):
        return self._error_code


class DaqResourceWarning(ResourceWarning):
    """Warning about DAQ resource usage, such as a leaking an NI-DAQmx task."""
