"""labd: a lab daemon and physics-aware trainer for physical neural networks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labd")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0+unknown"
