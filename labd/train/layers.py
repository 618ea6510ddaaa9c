"""Physical layers and the physics-aware training (PAT) autograd function.

``PATFunction`` is PAT itself, for any experiment: ``pat(experiment, model)`` is the function
``(x, theta) -> y`` whose forward pass is ``experiment(x, theta)`` (any callable: a daemon's
system, an instrument in this process, a simulation) and whose backward pass is the
vector-Jacobian product of the differentiable ``model`` at the same ``(x, theta)``, with
``dL/dy`` taken at the *measured* ``y``. Gradients reach ``theta`` and ``x`` (so earlier layers
train too).

``PhysicalLayer`` holds the trainable parameters ``theta`` of one physical system (optionally
``units`` independent copies used side by side, e.g. several SHG passes in one hybrid layer) and
computes ``y = f(x, theta)`` in one of three ways, chosen by ``layer.path``:

* ``"pat"``: the hardware computes ``y`` (one daemon request per batch), backward through the
  digital model ``f_m`` (a twin, the nominal model, or any differentiable callable) by PAT.
* ``"model"``: ``f_m`` forward and backward, entirely digital (in-silico and twin training).
* ``"hardware"``: the hardware, without gradients (evaluation of any mode on the device).

Range handling. ``theta = lo + (hi - lo) * sigmoid(raw)`` with ``raw`` the trainable tensor: the
parameters can never leave the system's declared ``param_range`` (the daemon would refuse them)
and no penalty weight has to be tuned; the price, small gradients for parameters pinned at an
edge, has not mattered in practice. Inputs reach the range through ``Rescale``: the paper's
digital element-wise affine ``a * y + b`` between layers, squashed into ``input_range`` by a
sigmoid (default; keeps a gradient everywhere) or a hard sigmoid (a clamp: exactly affine
inside the range).

The digital model is *not* a submodule: the task loss must never train the twin. It is reached
through ``layer.model``; ``layer.recorder`` (a callable taking ``(x, theta, y)`` numpy arrays),
when set, receives every hardware measurement made in ``pat`` path, for twin refinement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from labd.train.devices import from_host, to_host
from labd.train.hardware import Hardware

Path = Literal["pat", "model", "hardware"]
Recorder = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
#: ``(x, theta) -> y``: tensors in; a tensor or an array out.
Experiment = Callable[[torch.Tensor, torch.Tensor], Any]
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PATFunction(torch.autograd.Function):
    """``PATFunction.apply(x, theta, experiment, model)``: ``y = experiment(x, theta)`` (given
    detached tensors), backward through ``model`` at the same point (module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, theta: torch.Tensor,  # type: ignore[override]
                experiment: Experiment, model: Model) -> torch.Tensor:
        y = experiment(x.detach(), theta.detach())
        y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
        if (y.device, y.dtype) != (x.device, x.dtype):  # an experiment off the device
            y = y.to(device=x.device, dtype=x.dtype)
        ctx.save_for_backward(x, theta)
        ctx.model = model
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, theta = ctx.saved_tensors
        need_x, need_theta = ctx.needs_input_grad[:2]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(need_x)
            tg = theta.detach().requires_grad_(need_theta)
            wrt = [t for t in (xg, tg) if t.requires_grad]
            grads = list(torch.autograd.grad(ctx.model(xg, tg), wrt, grad_y)) if wrt else []
        gx = grads.pop(0) if need_x else None
        gtheta = grads.pop(0) if need_theta else None
        return gx, gtheta, None, None


def pat(experiment: Experiment, model: Model) -> Callable[[torch.Tensor, torch.Tensor],
                                                          torch.Tensor]:
    """PAT for any experiment: ``f(x, theta)`` measured by ``experiment`` and differentiated
    through ``model`` (the paper's ``make_pat_func``, with parameters). E.g.
    ``f = pat(hardware_forward, twin); loss(f(x, theta)).backward()``."""

    def f(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return PATFunction.apply(x, theta, experiment, model)  # type: ignore[no-any-return]

    return f


def digital_model(model: Model | str | FilePath, description: dict[str, Any]) -> Model:
    """A layer's digital model: ``model`` itself if callable, ``"nominal"``: the system's
    nominal model (``drivers.physics.nominal``), else the path of a twin file (``load_twin``)."""
    if callable(model):
        return model
    if model == "nominal":
        from drivers.physics.nominal import nominal_model

        return nominal_model(description)
    from labd.train.twins import load_twin

    return load_twin(model)


class PhysicalLayer(nn.Module):
    """``units`` copies of one system: x ``[B, units*input_dim]`` -> y ``[B, units*output_dim]``.

    ``device``: the ``Hardware`` to measure on (``labd.train.hardware.connect``), or the
    system's description (then ``hardware`` measures, or the layer is digital only).
    ``model``: the differentiable ``f_m(x, theta)`` of PAT's backward pass and of the ``model``
    path, as ``digital_model`` takes it (a twin, any callable, ``"nominal"``, a twin's file).
    The initial ``theta`` is uniform in the middle 80% of the range (``generator``'s draws).
    """

    def __init__(self, device: Hardware | dict[str, Any], model: Model | str | FilePath,
                 hardware: Hardware | None = None, units: int = 1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(device, Hardware):
            hardware = device
        description = hardware.description if isinstance(device, Hardware) else device
        model = digital_model(model, description)
        self.description = dict(description)
        self.system = str(description["name"])
        self.input_dim = int(description["input_dim"])
        self.param_dim = int(description["param_dim"])
        self.output_dim = int(description["output_dim"])
        self.input_range = tuple(float(v) for v in description["input_range"])
        self.param_range = tuple(float(v) for v in description["param_range"])
        self.units = units
        self.hardware = hardware
        self.path: Path = "pat"
        self.recorder: Recorder | None = None
        object.__setattr__(self, "_model", model)  # deliberately not a submodule
        if units < 1:
            raise ValueError(f"units must be at least 1, got {units}")
        u = torch.rand(units, self.param_dim, generator=generator) * 0.8 + 0.1
        self.raw_theta = nn.Parameter(torch.logit(u))

    @property
    def model(self) -> Model:
        return self._model  # type: ignore[no-any-return]

    @model.setter
    def model(self, model: Model) -> None:
        object.__setattr__(self, "_model", model)

    def theta(self) -> torch.Tensor:
        """Parameters in the system's range, ``[units, param_dim]``."""
        lo, hi = self.param_range
        return lo + (hi - lo) * torch.sigmoid(self.raw_theta)

    def _rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-shot inputs ``[B*units, input_dim]`` and parameters (``[P]`` or per row)."""
        batch = x.shape[0]
        rows = x.reshape(batch * self.units, self.input_dim)
        theta = self.theta()
        if self.units == 1:
            return rows, theta[0]
        return rows, theta.repeat(batch, 1)

    def measure(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """One hardware request for per-shot rows; records the shots if a recorder is set.
        The rows go to the host and the measurement comes back to ``x``'s device."""
        if self.hardware is None:
            raise RuntimeError(f"layer on {self.system!r} has no hardware to measure on")
        xn, tn = to_host(x), to_host(theta)
        y = self.hardware.forward(xn, tn)
        if self.recorder is not None:
            self.recorder(xn, tn, y)
        return from_host(np.array(y), x)

    def extra_repr(self) -> str:
        where = f" at {self.hardware.endpoint}" if self.hardware and self.hardware.endpoint else ""
        return (f"system={self.system!r}{where}, units={self.units}, "
                f"{self.units * self.input_dim} -> {self.units * self.output_dim}, "
                f"path={self.path!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.units * self.input_dim:
            raise ValueError(f"layer on {self.system!r} takes [batch, "
                             f"{self.units * self.input_dim}] inputs, got {list(x.shape)}")
        rows, theta = self._rows(x)
        if self.path == "pat":
            y = PATFunction.apply(rows, theta, self.measure, self.model)
        elif self.path == "model":
            y = self.model(rows, theta)
        else:
            with torch.no_grad():
                y = self.measure(rows.detach(), theta.detach())
        return y.reshape(batch, self.units * self.output_dim)


class Rescale(nn.Module):
    """The paper's digital element-wise rescaling: ``squash(a * (y - c) / s + b)`` in range.

    ``c`` and ``s`` are fixed per element at initialisation (``init_from``: the batch mean and
    standard deviation), so the trainable ``a`` (initially ``spread``) and ``b`` (initially 0)
    are of order one whatever the scale of the previous layer's outputs; together they are
    one affine map per element.
    """

    def __init__(self, features: int, out_range: tuple[float, float],
                 squash: Literal["sigmoid", "hard"] = "sigmoid") -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(features))
        self.b = nn.Parameter(torch.zeros(features))
        self.register_buffer("center", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        self.lo, self.hi = (float(v) for v in out_range)
        self.squash = squash

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = self.a * (y - self.center) / self.scale + self.b
        s = torch.sigmoid(z) if self.squash == "sigmoid" else torch.clamp(0.5 + z / 4, 0.0, 1.0)
        return self.lo + (self.hi - self.lo) * s

    @torch.no_grad()
    def init_from(self, y: torch.Tensor, spread: float = 1.5) -> None:
        """Standardise ``y`` (per element) so the batch spans about ``±spread`` before squash."""
        self.center.copy_(y.mean(0))
        self.scale.copy_(y.std(0).clamp_min(1e-6 * (y.abs().mean() + 1e-12)))
        self.a.fill_(spread)
        self.b.zero_()


class GroupReadout(nn.Module):
    """Class scores from a physical layer's outputs: the mean of each class's bins.

    The ``features`` outputs are cut into ``n_classes`` contiguous groups of
    ``features // n_classes`` bins (any remainder unused), as the paper read classes from summed
    spectral bins. Each class score then gets a digital element-wise affine ``a * s + b``
    (2 parameters per class, no mixing between classes), initialised to standardise the scores
    over a batch: without it the bins' different brightness alone decides the class.
    """

    def __init__(self, features: int, n_classes: int) -> None:
        super().__init__()
        if features < n_classes:
            raise ValueError(f"{features} outputs cannot be grouped into {n_classes} classes")
        self.width = features // n_classes
        self.n_classes = n_classes
        self.a = nn.Parameter(torch.ones(n_classes))
        self.b = nn.Parameter(torch.zeros(n_classes))
        self.register_buffer("center", torch.zeros(n_classes))
        self.register_buffer("scale", torch.ones(n_classes))

    def scores(self, y: torch.Tensor) -> torch.Tensor:
        used = y[:, : self.width * self.n_classes]
        return used.reshape(y.shape[0], self.n_classes, self.width).mean(2)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.a * (self.scores(y) - self.center) / self.scale + self.b

    @torch.no_grad()
    def init_from(self, y: torch.Tensor, spread: float = 1.0) -> None:
        s = self.scores(y)
        self.center.copy_(s.mean(0))
        self.scale.copy_(s.std(0).clamp_min(1e-6 * (s.abs().mean() + 1e-12)))
        self.a.fill_(spread)
        self.b.zero_()


class PhysicalNetwork(nn.Module):
    """A sequence of blocks (physical layers, rescalings, digital layers) ending in scores.

    ``set_path`` switches every physical layer at once; ``physical_layers()`` lists them.
    """

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def physical_layers(self) -> list[PhysicalLayer]:
        return [b for b in self.blocks if isinstance(b, PhysicalLayer)]

    def set_path(self, path: Path) -> None:
        for layer in self.physical_layers():
            layer.path = path

    def forward(self, x: torch.Tensor, keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Scores; if ``keep`` is a list, each physical layer's output is appended to it."""
        for block in self.blocks:
            x = block(x)
            if keep is not None and isinstance(block, PhysicalLayer):
                keep.append(x.detach())
        return x

    def initialise(self, x: torch.Tensor) -> None:
        """``initialise(self, x)``: rescalings and readout standardised on a batch ``x``."""
        initialise(self, x)


@torch.no_grad()
def initialise(network: nn.Module, *inputs: Any) -> Any:
    """Data-dependent initialisation of every ``Rescale`` and ``GroupReadout`` in ``network``
    (any module): runs ``network(*inputs)`` once, without gradients, along each physical
    layer's current path, and standardises each of them on what actually reaches it, before
    it is applied (the paper's rescaling needs a sensible scale before training; the outputs
    of a physical layer can be anywhere). Returns the network's output."""
    hooks = [m.register_forward_pre_hook(lambda m, args: m.init_from(args[0]))
             for m in network.modules() if isinstance(m, Rescale | GroupReadout)]
    try:
        return network(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
