"""An Ocean Insight (Ocean Optics) USB spectrometer (Flame, USB2000+/4000, HR4000, QE Pro...)
through python-seabreeze, as a ``Detector`` reading one spectrum per shot.

Open: the device with ``serial`` (the first free one if none), its integration time
(``integration_time_us``, checked against the device's limits), and the pixels whose
wavelengths (the calibration read from the device) lie in ``[start_nm, stop_nm]``: there must
be exactly ``samples`` of them (the error says how many there are). Then one spectrum is read
and dropped: the first after a new integration time was integrated with the old one.

A shot (``read()`` after the drive set the light, e.g. a pulse shaper's mask): the CCD
free-runs, and the spectrum a request returns is the window in progress, which began before
the mask changed; so ``discard`` spectra (default 1) are dropped, then ``average`` spectra are
read and averaged, each with the dark-count (electric dark pixels) and non-linearity
(coefficients in the device's EEPROM) corrections the config asks for. A shot takes about
``(discard + average) * integration_time_us``. Results are in counts.

Errors: a missing device, a device that stops answering (``SeaBreezeError``, ``OSError``,
``usb`` errors) are retryable ``InstrumentError``; settings the device refuses are not.

API as documented by python-seabreeze (``src/seabreeze/spectrometers.py``, docs
``quickstart.rst``): ``seabreeze.use(backend)``,
``seabreeze.spectrometers.Spectrometer.from_serial_number(serial)`` /
``from_first_available()``, ``integration_time_micros(us)`` (a method),
``integration_time_micros_limits``, ``wavelengths()``, ``intensities(correct_dark_counts,
correct_nonlinearity)``, ``model``, ``serial_number``, ``close()``, ``SeaBreezeError``; the
free-running behaviour as the maintainer describes it (python-seabreeze issues #18, #177).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from drivers.base import Detector, InstrumentError
from drivers.extras import require


class OceanSpectrometer(Detector):
    reported: ClassVar[tuple[str, ...]] = ("serial", "integration_time_us", "window_nm")

    def __init__(self, name: str, samples: int, start_nm: float, stop_nm: float,
                 serial: str | None = None, integration_time_us: int = 10000,
                 average: int = 1, discard: int = 1, correct_dark_counts: bool = True,
                 correct_nonlinearity: bool = True, backend: str = "cseabreeze") -> None:
        super().__init__(name, samples)
        hint = "Linux: install the udev rules with seabreeze_os_setup"
        require("seabreeze", "seabreeze", name, hint).use(backend)
        self.sb = require("seabreeze.spectrometers", "seabreeze", name, hint)
        if not start_nm < stop_nm:
            raise ValueError(f"{name}: start_nm must be below stop_nm")
        if average < 1 or discard < 0:
            raise ValueError(f"{name}: average must be >= 1 and discard >= 0")
        self.window_nm = (float(start_nm), float(stop_nm))
        self.serial = None if serial is None else str(serial)
        self.integration_time_us = int(integration_time_us)
        self.average, self.discard = int(average), int(discard)
        self.corrections = {"correct_dark_counts": bool(correct_dark_counts),
                            "correct_nonlinearity": bool(correct_nonlinearity)}
        self.spec: Any = None
        self.pixels = np.zeros(0, dtype=np.int64)

    @contextlib.contextmanager
    def _seabreeze(self, command: str, retryable: bool = True) -> Iterator[None]:
        try:
            yield
        except (self.sb.SeaBreezeError, OSError) as exc:
            where = self.serial or "first available"
            raise InstrumentError(self.name, f"spectrometer {where}: {exc}", command,
                                  retryable=retryable) from exc

    def connect(self) -> None:
        with self._seabreeze("from_serial_number"):
            self.spec = self.sb.Spectrometer.from_serial_number(self.serial)

    def disconnect(self) -> None:
        spec, self.spec = self.spec, None
        if spec is not None:
            spec.close()

    def identify(self) -> str:
        self.serial = str(self.spec.serial_number)
        return f"Ocean {self.spec.model} S/N {self.serial}"

    def configure(self) -> None:
        lo, hi = self.spec.integration_time_micros_limits
        if not lo <= self.integration_time_us < hi:
            raise InstrumentError(self.name, f"integration_time_us {self.integration_time_us} "
                                  f"is outside the {self.spec.model}'s [{lo}, {hi})",
                                  "integration_time_micros", retryable=False)
        with self._seabreeze("integration_time_micros", retryable=False):
            self.spec.integration_time_micros(self.integration_time_us)
        wavelengths = np.asarray(self.spec.wavelengths())
        start, stop = self.window_nm
        self.pixels = np.flatnonzero((wavelengths >= start) & (wavelengths <= stop))
        if self.pixels.size != self.samples:
            raise InstrumentError(self.name, f"{start:g}-{stop:g} nm covers "
                                  f"{self.pixels.size} pixels of {self.spec.model} "
                                  f"S/N {self.serial}, configured samples = {self.samples}",
                                  "wavelengths", retryable=False)
        with self._seabreeze("intensities", retryable=False):
            self.spec.intensities(**self.corrections)  # refused if not supported; stale

    def _spectrum(self) -> np.ndarray:
        with self._seabreeze("intensities"):
            return np.asarray(self.spec.intensities(**self.corrections))[self.pixels]

    def read(self) -> np.ndarray:
        shots = self.armed("intensities")
        trace = np.empty((shots, self.samples))
        for shot in range(shots):  # (a one-mask drive sends one shot at a time)
            for _ in range(self.discard):
                self._spectrum()
            trace[shot] = np.mean([self._spectrum() for _ in range(self.average)], axis=0)
        return trace
