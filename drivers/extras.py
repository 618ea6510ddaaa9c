"""Vendor libraries that drivers import only when a configuration uses them, each installed by
an optional extra of labd (``pip install 'labd[nidaq]'``)."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """A driver's vendor library is not installed (or cannot load its native part)."""


def require(module: str, extra: str, driver: str, hint: str = "") -> ModuleType:
    """Import ``module`` for ``driver``, or raise ``MissingExtra`` naming the extra to install.

    ``hint`` adds what else the library needs (a native runtime) when its import fails for a
    reason other than the package being absent."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise  # the library is there but one of its own dependencies is missing
        raise MissingExtra(f"driver {driver!r} needs the Python package {module.split('.')[0]!r}, "
                           f"which is not installed: pip install 'labd[{extra}]'") from None
    except OSError as exc:  # e.g. sounddevice without the PortAudio library
        raise MissingExtra(f"driver {driver!r}: {module} is installed but cannot load: {exc}"
                           + (f". {hint}" if hint else "")) from None
