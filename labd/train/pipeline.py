"""Pipelined PAT training steps: the same gradient as the plain loop, the instrument kept fed.

In the plain loop (``Trainer``) each physical layer's forward is one synchronous daemon request:
while the trainer rescales between layers, computes the loss, back-propagates through the
digital model and steps the optimiser, the instrument idles. ``pipelined_step`` computes the
*same* training step with the hardware busy nearly all the time:

* the minibatch is cut into chunks of ``chunk`` rows; every chunk's first-layer request is
  sent at once (``LabClient.submit``), so the daemon's queue for the system is never empty;
* the chunks flow through the physical layers as a wavefront: when chunk ``c``'s reply for
  layer ``k`` arrives, its digital blocks up to layer ``k+1`` run and its layer ``k+1``
  request joins the queue behind the other chunks' requests;
* while a request is being measured, the digital model's forward at the same ``(x, theta)``
  is computed with its autograd graph (the first half of ``PATFunction.backward``'s work);
* when a chunk's last layer is measured its share of the loss, ``sum of per-sample losses /
  B``, is back-propagated at once (through the model's graph at the measured point, as
  ``PATFunction`` does), while later chunks are still being measured; gradients accumulate in
  ``.grad``;
* after the last chunk: one optimiser step. Only that last chunk's backward pass and the step
  leave the instrument idle.

Why this is true PAT, not an approximation: the loss of a minibatch is the mean of per-sample
losses and no block mixes samples in its forward (rescaling and readout are element-wise with
statistics fixed at initialisation), so the sum of the chunks' gradients *is* the minibatch
gradient, each evaluated at the measured outputs of the current parameters. Parameters never
change while a minibatch is in flight (no stale gradients). ``tests/bench/test_pipeline.py``
checks that gradients equal the plain loop's.

Contract: ``pipelined_step(net, x, labels, loss_sum, chunk)`` runs forward (hardware) and
backward (digital model) for one minibatch and leaves the gradients in the parameters (the
caller zeroes them before and steps the optimiser after) and returns a ``Step``: the
minibatch's mean loss, its scores (detached) and the instrument seconds its replies reported
(``elapsed_s``). Every physical layer needs ``hardware.client`` with ``submit(system, x, theta)
-> id`` and ``result(id) -> ForwardResult`` (``LabClient``); inputs are clipped into range and
shots counted in ``hardware.queries`` as ``Hardware.forward`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from labd.train.layers import PhysicalLayer, PhysicalNetwork

#: What a chunk's forward yields: the layer and its per-shot rows and parameters; it is sent
#: back the model's point and the measured ``y``.
Request = tuple[PhysicalLayer, torch.Tensor, torch.Tensor]


@dataclass(frozen=True, slots=True)
class Step:
    loss: float  # mean loss over the minibatch
    scores: torch.Tensor  # [B, classes], detached
    instrument_s: float  # sum of the replies' elapsed_s


@dataclass(frozen=True, slots=True)
class ModelPoint:
    """The digital model evaluated, with its graph, at the point sent to the hardware."""

    x: torch.Tensor  # detached leaf, requires grad
    theta: torch.Tensor  # detached leaf, requires grad
    y: torch.Tensor  # layer.model(x, theta)

    @classmethod
    def of(cls, layer: PhysicalLayer, x: torch.Tensor, theta: torch.Tensor) -> ModelPoint:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            tg = theta.detach().requires_grad_(True)
            return cls(xg, tg, layer.model(xg, tg))


class MeasuredPAT(torch.autograd.Function):
    """``labd.train.layers.PATFunction`` with the hardware's ``y`` measured beforehand
    (asynchronously) and the model's forward at the same point already computed: backward is
    the model's vector-Jacobian product at ``point``, with ``dL/dy`` taken at the measured
    ``y``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, theta: torch.Tensor,  # type: ignore[override]
                point: ModelPoint, y: torch.Tensor) -> torch.Tensor:
        ctx.point = point
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        point: ModelPoint = ctx.point
        gx, gtheta = torch.autograd.grad(point.y, (point.x, point.theta), grad_y)
        return (gx if ctx.needs_input_grad[0] else None), gtheta, None, None


def _chunk_forward(net: PhysicalNetwork, x: torch.Tensor
                   ) -> Generator[Request, tuple[ModelPoint, torch.Tensor], torch.Tensor]:
    """The network's forward for one chunk; yields each physical request, receives the model's
    point and the measured ``y``, returns the scores (with the autograd graph of the PAT
    path)."""
    for block in net.blocks:
        if isinstance(block, PhysicalLayer):
            batch = x.shape[0]
            rows, theta = block._rows(x)
            point, y = yield block, rows.detach(), theta.detach()
            out = MeasuredPAT.apply(rows, theta, point, y)
            x = out.reshape(batch, block.units * block.output_dim)
        else:
            x = block(x)
    return x


def _submit(request: Request) -> tuple[tuple[PhysicalLayer, np.ndarray, np.ndarray,
                                             ModelPoint], str]:
    """Send a request; then, while it is measured, evaluate the model at the same point."""
    layer, rows, theta = request
    hw = layer.hardware
    if hw is None:
        raise RuntimeError(f"layer on {layer.system!r} has no hardware to measure on")
    xn = np.clip(rows.numpy(), *hw.input_range).astype(np.float32, copy=False)
    tn = np.clip(theta.numpy(), *hw.param_range).astype(np.float32, copy=False)
    rid = hw.client.submit(hw.system, xn, tn)
    hw.queries += int(xn.shape[0])
    hw.requests += 1
    return (layer, xn, tn, ModelPoint.of(layer, rows, theta)), rid


def pipelined_step(net: PhysicalNetwork, x: torch.Tensor, labels: torch.Tensor,
                   loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   chunk: int) -> Step:
    """Forward on the hardware and backward for one minibatch, pipelined (module docstring).

    ``loss_sum(scores, labels)`` must return the *sum* of per-sample losses (e.g.
    ``CrossEntropyLoss(reduction="sum")``); the gradient left in the parameters is that of the
    mean over the minibatch.
    """
    batch = x.shape[0]
    flows: dict[str, tuple[Generator[Request, Any, torch.Tensor], slice, Any]] = {}
    order: list[str] = []  # request ids in the order sent: the daemon answers one system FIFO
    for start in range(0, batch, chunk):
        rows = slice(start, min(start + chunk, batch))
        flow = _chunk_forward(net, x[rows])
        sent, rid = _submit(next(flow))
        flows[rid] = (flow, rows, sent)
        order.append(rid)
    parts: list[tuple[slice, torch.Tensor]] = []
    total, instrument_s = 0.0, 0.0
    while order:
        rid = order.pop(0)
        flow, rows, (layer, xn, tn, point) = flows.pop(rid)
        hw = layer.hardware
        assert hw is not None
        result = hw.client.result(rid)
        instrument_s += result.elapsed_s
        y = np.array(result.y, dtype=np.float32)
        if layer.recorder is not None:
            layer.recorder(xn, tn, y)
        try:
            sent, nxt = _submit(flow.send((point, torch.from_numpy(y))))
        except StopIteration as done:
            chunk_scores = done.value
            loss = loss_sum(chunk_scores, labels[rows]) / batch
            loss.backward()
            total += loss.item()
            parts.append((rows, chunk_scores.detach()))
            continue
        flows[nxt] = (flow, rows, sent)
        order.append(nxt)
    parts.sort(key=lambda p: p[0].start)
    return Step(total, torch.cat([s for _, s in parts]), instrument_s)
