"""``nidaqmx.system``: ``System.local().devices`` and ``Device(name)`` with the properties of
nidaqmx-python's ``generated/nidaqmx/system/device.py`` that this fake knows."""

from __future__ import annotations

from . import _hardware


class Device:
    def __init__(self, name, *, grpc_options=None):
        self._name = name

    def _info(self):
        return _hardware.device(self._name)

    def __eq__(self, other):
        return isinstance(other, Device) and self._name == other._name

    def __hash__(self):
        return hash(self._name)

    def __repr__(self):
        return f"Device(name={self._name})"

    @property
    def name(self):
        return self._name

    @property
    def product_type(self):
        return self._info()["product_type"]

    @property
    def serial_num(self):
        return self._info()["serial_num"]

    @property
    def ao_voltage_rngs(self):
        return list(self._info()["ao_voltage_rngs"])

    @property
    def ai_voltage_rngs(self):
        return list(self._info()["ai_voltage_rngs"])

    @property
    def ao_max_rate(self):
        return self._info()["ao_max_rate"]

    @property
    def ai_max_single_chan_rate(self):
        return self._info()["ai_max_single_chan_rate"]

    @property
    def terminals(self):
        return list(self._info()["terminals"])

    @property
    def is_simulated(self):
        return False

    def reset_device(self):
        self._info()


class DeviceCollection:
    def __iter__(self):
        return iter(Device(name) for name in _hardware.devices())

    def __len__(self):
        return len(_hardware.devices())

    def __getitem__(self, index):
        if isinstance(index, str):
            return Device(_hardware.device(index)["name"])
        return list(self)[index]

    @property
    def device_names(self):
        return list(_hardware.devices())


class System:
    def __init__(self, grpc_options=None):
        pass

    @staticmethod
    def local():
        return System()

    @property
    def devices(self):
        return DeviceCollection()
