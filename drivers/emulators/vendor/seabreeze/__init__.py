"""A fake of python-seabreeze (``seabreeze`` on PyPI, ap--/python-seabreeze) for the
``seabreeze.spectrometers`` API, with an emulated Ocean Flame-S behind it
(``drivers.emulators.hardware.FlameSpectrometer``, reached over ``drivers.emulators.bus``).
``seabreeze.use("cseabreeze" | "pyseabreeze")`` is accepted and changes nothing."""

__version__ = "2.10.1+labd.fake"

_BACKENDS = ("cseabreeze", "pyseabreeze")


def use(backend, force=False, **kwargs):
    if backend not in _BACKENDS:
        raise ValueError(f"backend not in {_BACKENDS!r}")


__all__ = ["use"]
