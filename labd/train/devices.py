"""Where the trainer's digital work runs: ``--device auto|cpu|cuda``.

The network's digital parts, the digital models (twins, nominal models), the twin's fitting
and the data tensors live on one ``torch.device``; physical layers exchange rows with the
hardware as host numpy arrays at one boundary (``PhysicalLayer.measure`` and the pipeline's
requests), through ``to_host`` and ``from_host``: nothing else moves data between devices in
the training loop.
"""

from __future__ import annotations

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(Exception):
    """A device that cannot be used here."""


def resolve_device(name: str) -> str:
    """``auto``: ``cuda`` when torch sees a CUDA device, else ``cpu``; ``cuda`` without one is
    a ``DeviceError``."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise DeviceError(f"unknown device {name!r}; use one of {DEVICES}")
    cuda = torch.cuda.is_available()
    if name == "auto":
        return "cuda" if cuda else "cpu"
    if name.startswith("cuda") and not cuda:
        raise DeviceError(f"--device {name}: torch sees no CUDA device here (this torch is "
                          f"{torch.__version__}); use --device cpu or auto")
    return name


def to_host(t: torch.Tensor) -> np.ndarray:
    """A tensor's values as a host numpy array (the hardware boundary)."""
    return t.detach().cpu().numpy()


def from_host(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A host array as a tensor on ``like``'s device (the hardware boundary)."""
    return torch.from_numpy(np.asarray(a)).to(like.device)
