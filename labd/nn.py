"""Physical layers for your own PyTorch networks, trained with PAT through a labd daemon.

The parts a researcher puts inside any ``torch.nn.Module``; the daemon may run on another
machine. Everything here is silent unless asked (``progress=True`` shows progress bars; the
``labd.train`` loggers log at INFO what is collected and fitted, and install no handler)::

    import labd.nn as pnn

    shg = pnn.connect("tcp://labpc:5555", "shg")        # + curve=pnn.curve_keys(...) if needed
    data = pnn.collect(shg, samples=10000, repeats=2)    # random (x, theta) in range, measured
    twin, report = pnn.fit_twin(data)                    # residual on the nominal model, or
    pnn.save_twin("shg-twin.pt", twin, report)           #   data only where there is none
    layer = pnn.PhysicalLayer(shg, twin)                 # forward measured, backward by the twin

Parts (each documented where it lives):

* ``connect(endpoint, system, curve=None)`` -> ``Hardware``: one system of one daemon, with
  its ``description``, dimensions and ranges, and a count of shots (``queries``);
  ``curve_keys(server_public, client_secret)`` for a daemon that requires CURVE.
* ``PhysicalLayer(hardware, model, units=1)``: an ``nn.Module`` with trainable ``theta``
  (kept in the system's range), ``x [B, units*input_dim] -> y [B, units*output_dim]``;
  ``layer.path`` is ``"pat"`` (measured forward, model backward; the default), ``"model"``
  (digital only) or ``"hardware"`` (measured, no gradient). ``model``: a ``Twin``, any
  differentiable callable ``(x, theta) -> y``, ``"nominal"`` or a twin file's path.
* ``Rescale(features, hardware.input_range)``: the paper's digital element-wise affine into a
  physical layer's input range; ``initialise(net, batch)`` standardises every ``Rescale`` of
  any network on what reaches it.
* ``pat(experiment, model)`` / ``PATFunction``: PAT for any callable experiment.
* ``collect``, ``TwinData``, ``fit_twin``, ``Twin``, ``save_twin``, ``load_twin``,
  ``nominal_model``, ``TwinRefiner``: twins, from measurements to a file and back.

``examples/custom_network.py`` trains a network of convolutional, physical and linear layers
this way.
"""

from __future__ import annotations

from drivers.physics.nominal import nominal_model
from labd.client import curve_keys
from labd.train.hardware import Hardware, connect
from labd.train.layers import PATFunction, PhysicalLayer, Rescale, initialise, pat
from labd.train.twins import (
    Twin,
    TwinData,
    TwinRefiner,
    collect,
    fit_twin,
    load_twin,
    save_twin,
)

__all__ = [
    "Hardware",
    "PATFunction",
    "PhysicalLayer",
    "Rescale",
    "Twin",
    "TwinData",
    "TwinRefiner",
    "collect",
    "connect",
    "curve_keys",
    "fit_twin",
    "initialise",
    "load_twin",
    "nominal_model",
    "pat",
    "save_twin",
]
