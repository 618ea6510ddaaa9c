"""``seabreeze.spectrometers``: ``list_devices()`` and ``Spectrometer`` as in python-seabreeze's
``src/seabreeze/spectrometers.py`` (the corrections in ``intensities`` are computed the same
way), over an emulated device. The device free-runs (trigger mode 0): ``intensities()``
returns the integration window in progress when it ends, so the first spectrum after the light
or the integration time changed mixes old and new, as on the hardware."""

from __future__ import annotations

import time

import numpy

from drivers.emulators.bus import Bus

from ._exc import SeaBreezeError

__all__ = ["SeaBreezeError", "Spectrometer", "list_devices"]

_devices: list[SeaBreezeDevice] = []


class _SpectrometerFeature:
    def __init__(self, device):
        self._device = device

    def get_wavelengths(self):
        info = self._device._info
        pixel = numpy.arange(info["pixels"], dtype=numpy.float64)
        return sum(c * pixel ** i for i, c in enumerate(info["wavelength_coefficients"]))

    def get_intensities(self):
        self._device._check()
        raw, wait = Bus.connect().call("seabreeze", "spectrum")
        time.sleep(wait)
        return numpy.asarray(raw, dtype=numpy.float64)

    def set_integration_time_micros(self, integration_time_micros):
        self._device._check()
        t_min, t_max = self._device._info["integration_limits"]
        if not t_min <= integration_time_micros < t_max:
            raise SeaBreezeError(f"Integration not in [{t_min:d}, {t_max:d}]")
        Bus.connect().call("seabreeze", "set_integration", int(integration_time_micros))

    def get_integration_time_micros_limits(self):
        return tuple(self._device._info["integration_limits"])

    def get_maximum_intensity(self):
        return float(self._device._info["max_intensity"])

    def get_electric_dark_pixel_indices(self):
        return list(self._device._info["dark_pixels"])

    def set_trigger_mode(self, mode):
        if mode not in (0, 1, 2, 3, 4):
            raise SeaBreezeError("Only supports: {0, 1, 2, 3, 4}")
        if mode != 0:
            raise NotImplementedError("the fake seabreeze free-runs (trigger mode 0) only")

    @property
    def _spectrum_length(self):
        return self._device._info["pixels"]


class _NonlinearityFeature:
    def __init__(self, device):
        self._device = device

    def get_nonlinearity_coefficients(self):
        return list(self._device._info["nonlinearity_coefficients"])


class _Features:
    def __init__(self, device):
        self.spectrometer = _SpectrometerFeature(device)
        self.nonlinearity_coefficients = _NonlinearityFeature(device)


class SeaBreezeDevice:
    def __init__(self, info):
        self._info = info
        self._open = False
        self.f = _Features(self)

    @property
    def model(self):
        return self._info["model"]

    @property
    def serial_number(self):
        return self._info["serial_number"]

    @property
    def is_open(self):
        return self._open

    @property
    def features(self):
        return {"spectrometer": [self.f.spectrometer],
                "nonlinearity_coefficients": [self.f.nonlinearity_coefficients]}

    def open(self):
        self._open = True

    def close(self):
        self._open = False

    def _check(self):
        if not self._open:
            raise SeaBreezeError("Device not opened.")

    def __repr__(self):
        return f"<SeaBreezeDevice {self.model}:{self.serial_number}>"


def list_devices():
    if not _devices:
        _devices.append(SeaBreezeDevice(Bus.connect().call("seabreeze", "info")))
    return list(_devices)


class Spectrometer:
    def __init__(self, device):
        if not isinstance(device, SeaBreezeDevice):
            raise TypeError(f"`device` has to be a `SeaBreezeDevice` instance, got {device!r}")
        self._dev = device
        self.open()
        self._nc = numpy.poly1d(
            self._dev.f.nonlinearity_coefficients.get_nonlinearity_coefficients()[::-1])
        self._dp = self._dev.f.spectrometer.get_electric_dark_pixel_indices()
        self._wavelengths = self._dev.f.spectrometer.get_wavelengths()

    @classmethod
    def from_first_available(cls):
        for dev in list_devices():
            if not dev.is_open:
                return cls(dev)
        raise SeaBreezeError("No unopened device found.")

    @classmethod
    def from_serial_number(cls, serial=None):
        if serial is None:
            return cls.from_first_available()
        for dev in list_devices():
            if dev.serial_number == str(serial):
                if dev.is_open:
                    raise SeaBreezeError("Device already opened.")
                return cls(dev)
        raise SeaBreezeError(f"No device attached with serial number '{serial}'.")

    def wavelengths(self):
        return self._wavelengths

    def intensities(self, correct_dark_counts=False, correct_nonlinearity=False):
        if correct_dark_counts and not self._dp:
            raise SeaBreezeError("This device does not support dark count correction.")
        if correct_nonlinearity and not self._nc:
            raise SeaBreezeError("This device does not support nonlinearity correction.")
        out = self._dev.f.spectrometer.get_intensities()
        dark_offset = 0.0
        if correct_nonlinearity or correct_dark_counts:
            dark_offset = numpy.mean(out[self._dp]) if self._dp else 0.0
            out -= dark_offset
        if correct_nonlinearity and self._nc:
            out = out / numpy.polyval(self._nc, out)
        if correct_nonlinearity and (not correct_dark_counts):
            out += dark_offset
        return out

    @property
    def max_intensity(self):
        return self._dev.f.spectrometer.get_maximum_intensity()

    def spectrum(self, correct_dark_counts=False, correct_nonlinearity=False):
        return numpy.vstack((self._wavelengths,
                             self.intensities(correct_dark_counts, correct_nonlinearity)))

    def integration_time_micros(self, integration_time_micros):
        self._dev.f.spectrometer.set_integration_time_micros(integration_time_micros)

    @property
    def integration_time_micros_limits(self):
        return self._dev.f.spectrometer.get_integration_time_micros_limits()

    def trigger_mode(self, mode):
        self._dev.f.spectrometer.set_trigger_mode(mode)

    @property
    def serial_number(self):
        return self._dev.serial_number

    @property
    def model(self):
        return self._dev.model

    @property
    def pixels(self):
        return self._dev.f.spectrometer._spectrum_length

    @property
    def features(self):
        return self._dev.features

    @property
    def f(self):
        return self._dev.f

    def open(self):
        self._dev.open()

    def close(self):
        self._dev.close()

    def __repr__(self):
        return f"<Spectrometer {self.model}:{self.serial_number}>"
