"""Fakes of vendor libraries at their own Python API, for rehearsing and testing without hardware.

This folder is meant to be put first on ``PYTHONPATH`` so that ``import nidaqmx``,
``import sounddevice`` and ``import seabreeze`` find the fakes instead of the vendor packages
(``drivers.emulators.rehearse`` does it). Each fake follows its library's documented API and
errors, and talks to emulated hardware (``drivers.emulators.hardware``) with a simulated bench
behind it, over ``drivers.emulators.bus``.
"""
