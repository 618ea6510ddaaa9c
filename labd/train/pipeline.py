"""Pipelined PAT training steps: the plain loop's gradient, with the instrument kept fed.

Contract of ``Pipeline(net, loss_sum, chunk, eval_chunk)`` (``Trainer`` uses it for ``pat``):

* ``step(x, labels)`` runs one minibatch forward on the hardware and backward through the
  digital models, leaving the gradient of ``loss_sum(scores, labels) / B`` in the parameters
  (``loss_sum``: the *sum* of per-sample losses; the caller zeroes gradients before and steps
  the optimiser after) and returns a ``Step``. Each physical layer's rows go as requests of
  ``chunk`` samples, sent at once; a chunk's next-layer request is sent as soon as its reply
  comes (a wavefront), and the model is evaluated at each layer's rows while they are
  measured. The gradient *is* the plain loop's (``PATFunction``): the loss is a mean of
  per-sample losses, no block mixes samples, and parameters never change while a minibatch
  is in flight. ``tests/train/test_pipeline.py`` checks it.
* ``evaluate(x)`` queues an evaluation of the network *as it is now* (a frozen copy) and
  returns an ``Evaluation``; its requests of ``eval_chunk`` samples are sent as fillers, one
  behind each step's last request and one whenever the daemon's queue would be empty while
  the trainer computes, so they are measured in the gaps the steps leave. ``drain()`` sends
  what is left back to back and waits for every reply. Training steps are unchanged by them.
* Every request is within the daemons' message limits (``samples_per_request``); replies are
  taken with ``LabClient.result(id, retry=True)`` (retryable failures sent again with the same
  id); inputs are clipped into range and shots counted in ``hardware.queries`` as
  ``Hardware.forward`` does; a layer's ``recorder`` gets each layer's minibatch at once, as in
  the plain loop. ``instrument_s`` adds up the replies' ``elapsed_s`` (and each
  ``hardware.instrument_s`` its own, as ``Hardware.forward`` does).

Timings, the variants tried and why they were not kept: ``docs/performance.md``.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from labd.train.devices import from_host, to_host
from labd.train.layers import PhysicalLayer, PhysicalNetwork

#: Layers with at most this many outputs get Jacobians (``JacobianPoint``) in steps no
#: evaluation fills; more outputs cost more than the backward pass they save.
JACOBIAN_OUTPUTS = 16

#: What a chunk's forward yields: the layer and its per-shot rows and parameters.
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

    def vjp(self, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``dL/dx`` and ``dL/dtheta`` from ``dL/dy``: the model's vector-Jacobian product."""
        gx, gtheta = torch.autograd.grad(self.y, (self.x, self.theta), grad_y)
        return gx, gtheta


@dataclass(frozen=True, slots=True)
class JacobianPoint:
    """The digital model's Jacobians at the point sent to the hardware, per row: computed
    while the point is measured, so that the backward pass after the reply is two small
    products instead of a pass through the model. The same vector-Jacobian product as
    ``ModelPoint`` (rows are independent: no model mixes samples)."""

    jx: torch.Tensor  # [outputs, rows, inputs]: d y[r, o] / d x[r, i]
    jtheta: torch.Tensor  # [outputs, rows, params]: d y[r, o] / d theta (of row r)
    shared: bool  # theta was one vector [P] for every row (its gradient sums the rows')

    @classmethod
    def of(cls, layer: PhysicalLayer, x: torch.Tensor, theta: torch.Tensor) -> JacobianPoint:
        rows = x.shape[0]
        shared = theta.ndim == 1
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            # one parameter row per row, so that each row's d y / d theta stays apart
            tg = (theta.detach().expand(rows, -1) if shared else theta.detach()).clone()
            tg.requires_grad_(True)
            y = layer.model(xg, tg)
            outputs = y.shape[1]
            eye = torch.eye(outputs, dtype=y.dtype, device=y.device)
            basis = eye.unsqueeze(1).expand(outputs, rows, outputs)
            jx, jtheta = torch.autograd.grad(y, (xg, tg), basis, is_grads_batched=True)
        return cls(jx, jtheta, shared)

    def vjp(self, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx = torch.einsum("ro,ori->ri", grad_y, self.jx)
        if self.shared:
            return gx, torch.einsum("ro,orp->p", grad_y, self.jtheta)
        return gx, torch.einsum("ro,orp->rp", grad_y, self.jtheta)


class MeasuredPAT(torch.autograd.Function):
    """``labd.train.layers.PATFunction`` with the hardware's ``y`` measured beforehand
    (asynchronously) and the model's forward at the same point already computed: backward is
    the model's vector-Jacobian product at ``point``, with ``dL/dy`` taken at the measured
    ``y``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, theta: torch.Tensor,  # type: ignore[override]
                point: ModelPoint | JacobianPoint, y: torch.Tensor) -> torch.Tensor:
        ctx.point = point
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        gx, gtheta = ctx.point.vjp(grad_y)
        return (gx if ctx.needs_input_grad[0] else None), gtheta, None, None


def _send(layer: PhysicalLayer, rows: torch.Tensor, theta: torch.Tensor
          ) -> tuple[np.ndarray, np.ndarray, str]:
    """Send one request (clipped into range, shots counted as ``Hardware.forward`` does)."""
    hw = layer.hardware
    if hw is None:
        raise RuntimeError(f"layer on {layer.system!r} has no hardware to measure on")
    xn = np.clip(to_host(rows), *hw.input_range).astype(np.float32, copy=False)
    tn = np.clip(to_host(theta), *hw.param_range).astype(np.float32, copy=False)
    rid = hw.client.submit(hw.system, xn, tn)
    hw.queries += int(xn.shape[0])
    hw.requests += 1
    return xn, tn, rid


def _eval_forward(net: PhysicalNetwork, x: torch.Tensor
                  ) -> Generator[Request, torch.Tensor, torch.Tensor]:
    """The network's forward without gradients for one chunk: yields each physical request,
    receives the measured ``y``, returns the scores."""
    for block in net.blocks:
        if isinstance(block, PhysicalLayer):
            batch = x.shape[0]
            rows, theta = block._rows(x)
            y = yield block, rows, theta
            x = y.reshape(batch, block.units * block.output_dim)
        else:
            x = block(x)
    return x


def samples_per_request(layers: list[PhysicalLayer]) -> int | None:
    """The most samples (``units`` rows each) one request of every layer in ``layers`` may
    carry under its daemon's message limit (``LabClient.forward_rows``), at least 1 (a single
    sample over the limit is split by the client); ``None`` when no limit is known."""
    most = None
    for layer in layers:
        hw = layer.hardware
        rows_of = getattr(hw.client, "forward_rows", None) if hw is not None else None
        rows = None if rows_of is None else rows_of(hw.system, layer.input_dim,
                                                    layer.param_dim, layer.units > 1)
        if rows is not None:
            most = min(most or rows, max(1, rows // layer.units))
    return most


def _even(n: int, most: int) -> list[slice]:
    """``n`` rows cut into the fewest chunks of at most ``most`` rows, of sizes differing by at
    most one (49 rows, 11 at most: 10, 10, 10, 10, 9; not 11, 11, 11, 11, 5: a short chunk
    is a short filler, which leaves the instrument idle in the gap it was meant to fill)."""
    count = -(-n // most)
    base, extra = divmod(n, count)
    out, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


class Evaluation:
    """Scores of one evaluation pass (``Pipeline.evaluate``): ``done`` once every chunk is
    measured, then ``scores`` [N, classes]."""

    def __init__(self, n: int, network: PhysicalNetwork | None = None) -> None:
        self.parts: dict[int, torch.Tensor] = {}
        self.n = n
        self.remaining = 0
        self.network = network  # the frozen copy it measures, until it is done

    @property
    def done(self) -> bool:
        return self.remaining == 0

    @property
    def scores(self) -> torch.Tensor:
        if not self.done:
            raise RuntimeError("evaluation still in flight (Pipeline.drain() finishes it)")
        return torch.cat([self.parts[k] for k in sorted(self.parts)])


@dataclass(slots=True)
class _EvalFlow:
    """One evaluation chunk on its way through the layers."""

    flow: Generator[Request, torch.Tensor, torch.Tensor]
    evaluation: Evaluation
    start: int
    x: torch.Tensor  # its input rows
    request: Request | None = None  # its next request, computed, not yet sent (None before
    # the first: computed when sent)


@dataclass(slots=True)
class _Chunk:
    """A chunk of a step: its index and the layer of the request in flight."""

    index: int
    layer: int


@dataclass(slots=True)
class _InFlight:
    rid: str
    layer: PhysicalLayer
    xn: np.ndarray
    tn: np.ndarray
    owner: Any  # _EvalFlow or _Chunk


Owner = TypeVar("Owner")


@dataclass(slots=True)
class _Minibatch:
    """A step in progress: per physical layer, what each chunk sent and what came back."""

    layers: list[PhysicalLayer]
    segments: list[list[torch.nn.Module]]  # digital blocks before each layer, and after
    chunks: list[slice]
    jacobians: bool
    sent: list[list[Any]] = field(default_factory=list)  # (rows, theta) per layer and chunk
    arrays: list[list[Any]] = field(default_factory=list)  # (xn, tn) as sent, for a recorder
    measured: list[list[Any]] = field(default_factory=list)  # y per layer and chunk
    waiting: list[int] = field(default_factory=list)  # replies still to come per layer
    to_send: int = 0  # requests still to send
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # with graph
    points: list[Any] = field(default_factory=list)  # the model at each layer's rows

    def __post_init__(self) -> None:
        n = len(self.chunks)
        self.sent = [[None] * n for _ in self.layers]
        self.arrays = [[None] * n for _ in self.layers]
        self.measured = [[None] * n for _ in self.layers]
        self.waiting = [n] * len(self.layers)
        self.to_send = n * len(self.layers)

    def graph_inputs(self, k: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``k``'s rows and parameters from ``h``, the previous layer's output (or the
        input), through the digital blocks between them."""
        for block in self.segments[k]:
            h = block(h)
        return self.layers[k]._rows(h)

    @staticmethod
    def joined(parts: list[Any]) -> Any:
        """A layer's per-chunk ``(x, theta)`` pairs as one (``theta`` shared or per row)."""
        theta = parts[0][1]
        if theta.ndim == 2:
            theta = _cat([p[1] for p in parts])
        return _cat([p[0] for p in parts]), theta


def _cat(parts: list[Any]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


class Pipeline:
    """Pipelined PAT steps and evaluations on the same hardware (module docstring)."""

    #: Per-row model Jacobians instead of the model's graph (``JacobianPoint``): ``None``
    #: (automatic) in steps no evaluation fills, for layers of at most ``JACOBIAN_OUTPUTS``
    #: outputs, and not for a model whose Jacobian failed once (``vmap`` cannot batch it).
    jacobians: bool | None = None

    def __init__(self, net: PhysicalNetwork,
                 loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 chunk: int, eval_chunk: int | None = None) -> None:
        self.net = net
        self.loss_sum = loss_sum
        #: samples per request: within the daemons' message limits
        self.most = samples_per_request(net.physical_layers()) or sys.maxsize
        self.chunk = min(chunk, self.most)
        self.eval_chunk = min(eval_chunk or chunk, self.most)
        self.inflight: deque[_InFlight] = deque()  # in the order sent: answered FIFO
        self.fillers: deque[_EvalFlow] = deque()  # evaluation chunks with a request to send
        self._frozen_pool: list[PhysicalNetwork] = []  # copies of finished evaluations
        self._frozen_made = 0
        self._no_jacobians: set[int] = set()  # models whose Jacobians failed
        self.instrument_s = 0.0

    # -- evaluation -----------------------------------------------------------------------

    def _copy(self, recorder: bool) -> PhysicalNetwork:
        """A deep copy of the network whose physical layers share the hardware and the digital
        model, and the recorder if ``recorder`` (else they have none)."""
        memo: dict[int, Any] = {}
        for layer in self.net.physical_layers():
            memo[id(layer.hardware)] = layer.hardware
            memo[id(layer.model)] = layer.model
            memo[id(layer.recorder)] = layer.recorder if recorder else None
        return copy.deepcopy(self.net, memo)

    def _frozen(self) -> PhysicalNetwork:
        """A copy of the network as it is now: one whose evaluation is finished, overwritten
        (a deep copy is slow, at the end of an epoch), else a new one."""
        if not self._frozen_pool:
            self._frozen_pool.append(self._new_frozen())
        frozen = self._frozen_pool.pop()
        with torch.no_grad():
            for mine, live in zip(frozen.state_dict(keep_vars=True).values(),
                                  self.net.state_dict(keep_vars=True).values(), strict=True):
                mine.copy_(live)
        return frozen

    def _new_frozen(self) -> PhysicalNetwork:
        self._frozen_made += 1
        frozen = self._copy(recorder=False)  # evaluation shots are not training data
        frozen.set_path("hardware")
        frozen.eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return frozen

    def evaluate(self, x: torch.Tensor) -> Evaluation:
        """Queue an evaluation of the network as it is now (module docstring)."""
        frozen = self._frozen()
        evaluation = Evaluation(x.shape[0], frozen)
        for rows in _even(x.shape[0], self.eval_chunk):
            self._queue(evaluation, rows.start, x[rows])
        return evaluation

    def _queue(self, evaluation: Evaluation, start: int, x: torch.Tensor) -> None:
        """Queue rows ``x`` (from row ``start``) of ``evaluation`` as a filler."""
        assert evaluation.network is not None
        self.fillers.append(_EvalFlow(_eval_forward(evaluation.network, x), evaluation,
                                      start, x))
        evaluation.remaining += 1

    def _send_filler(self) -> bool:
        """Send the next filler's request; False when there is none."""
        if not self.fillers:
            return False
        flow = self.fillers.popleft()
        if flow.request is None:
            with torch.inference_mode():
                flow.request = next(flow.flow)
        layer, rows, theta = flow.request
        flow.request = None
        xn, tn, rid = _send(layer, rows, theta)
        self.inflight.append(_InFlight(rid, layer, xn, tn, flow))
        return True

    def _advance_eval(self, flow: _EvalFlow, y: torch.Tensor, eager: bool) -> None:
        """An evaluation reply: the chunk's next request (sent at once if ``eager``, else
        queued as a filler), or its scores."""
        try:
            with torch.inference_mode():
                flow.request = flow.flow.send(y)
        except StopIteration as done:
            evaluation = flow.evaluation
            evaluation.parts[flow.start] = done.value
            evaluation.remaining -= 1
            if evaluation.done and evaluation.network is not None:
                self._frozen_pool.append(evaluation.network)  # free for the next evaluation
                evaluation.network = None
            return
        if eager:
            self.fillers.appendleft(flow)
            self._send_filler()
        else:
            self.fillers.append(flow)

    def drain(self) -> None:
        """Send every outstanding evaluation request (a wavefront) and wait for all replies.
        An evaluation none of whose requests was sent yet (the last one of a training) is cut
        again into as few chunks as the message limit allows, two at least (every request
        costs the daemon its dead time)."""
        evaluations = {id(f.evaluation): f.evaluation for f in self.fillers}
        for evaluation in evaluations.values():
            flows = [f for f in self.fillers if f.evaluation is evaluation]
            if (len(flows) <= 2 or evaluation.parts or evaluation.remaining != len(flows)
                    or any(f.request is not None for f in flows)):
                continue
            for f in flows:
                self.fillers.remove(f)
            evaluation.remaining = 0
            x = torch.cat([f.x for f in sorted(flows, key=lambda f: f.start)])
            for rows in _even(x.shape[0], min(-(-x.shape[0] // 2), self.most)):
                self._queue(evaluation, rows.start, x[rows])
        while self.fillers:
            self._send_filler()
        while self.inflight:
            self._collect(eager=True)

    # -- replies --------------------------------------------------------------------------

    def _collect(self, eager: bool = False) -> tuple[_InFlight, torch.Tensor]:
        """Wait for the oldest request in flight; evaluation replies are handled here."""
        entry = self.inflight.popleft()
        hw = entry.layer.hardware
        assert hw is not None
        result = hw.client.result(entry.rid, retry=True)  # retried as ``measure`` is
        self.instrument_s += result.elapsed_s
        hw.instrument_s += result.elapsed_s
        y = from_host(np.array(result.y, dtype=np.float32), entry.layer.raw_theta)  # device
        if isinstance(entry.owner, _EvalFlow):
            self._advance_eval(entry.owner, y, eager)
        return entry, y

    def _reply_for(self, kind: type[Owner]) -> tuple[_InFlight, Owner, torch.Tensor]:
        """Collect replies (``_collect`` handles evaluation ones) until one for an owner of
        type ``kind`` arrives: its entry, its owner and the measured ``y``."""
        while True:
            entry, y = self._collect()
            if isinstance(entry.owner, kind):
                return entry, entry.owner, y

    def _keep_fed(self) -> None:
        """Before the trainer computes: if nothing is queued, send an evaluation filler."""
        if not self.inflight:
            self._send_filler()

    # -- training -------------------------------------------------------------------------

    def _jacobians(self, layers: list[PhysicalLayer]) -> bool:
        """Whether this step computes Jacobians (``jacobians``)."""
        if self.jacobians is not None:
            return self.jacobians
        return not self.fillers and all(layer.output_dim <= JACOBIAN_OUTPUTS
                                        for layer in layers)

    def _point(self, layer: PhysicalLayer, x: torch.Tensor, theta: torch.Tensor,
               jacobians: bool) -> ModelPoint | JacobianPoint:
        if jacobians and id(layer.model) not in self._no_jacobians:
            try:
                return JacobianPoint.of(layer, x, theta)
            except RuntimeError:  # e.g. a custom autograd function vmap cannot batch
                if self.jacobians:  # asked for explicitly
                    raise
                self._no_jacobians.add(id(layer.model))
        return ModelPoint.of(layer, x, theta)

    def _segments(self) -> tuple[list[PhysicalLayer], list[list[torch.nn.Module]]]:
        """The physical layers and the digital blocks around them: ``segments[k]`` runs
        before layer ``k``, ``segments[-1]`` after the last one."""
        layers: list[PhysicalLayer] = []
        segments: list[list[torch.nn.Module]] = [[]]
        for block in self.net.blocks:
            if isinstance(block, PhysicalLayer):
                layers.append(block)
                segments.append([])
            else:
                segments[-1].append(block)
        return layers, segments

    def _chunk_size(self, batch: int) -> int:
        """Samples per request of a step of ``batch`` samples."""
        return self.chunk

    def _sent(self, m: _Minibatch, k: int) -> None:
        """After a step's request for layer ``k``: a filler behind the step's last one (it is
        measured while the trainer waits for that reply, back-propagates and steps)."""
        if m.to_send == 0:
            self._send_filler()

    def _submit(self, m: _Minibatch, k: int, index: int, rows: torch.Tensor,
                theta: torch.Tensor) -> None:
        """Send chunk ``index``'s request for layer ``k``."""
        xn, tn, rid = _send(m.layers[k], rows, theta)
        self.inflight.append(_InFlight(rid, m.layers[k], xn, tn, _Chunk(index, k)))
        m.sent[k][index] = (rows, theta)
        m.to_send -= 1
        self._sent(m, k)

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> Step:
        """One minibatch forward (hardware) and backward (models): module docstring."""
        batch = x.shape[0]
        layers, segments = self._segments()
        chunk = self._chunk_size(batch)
        m = _Minibatch(layers, segments, [slice(s, min(s + chunk, batch))
                                          for s in range(0, batch, chunk)],
                       self._jacobians(layers))
        began = self.instrument_s
        m.inputs.append(m.graph_inputs(0, x))
        rows, theta = m.inputs[0][0].detach(), m.inputs[0][1].detach()
        units = layers[0].units
        for index, c in enumerate(m.chunks):
            r = slice(c.start * units, c.stop * units)
            self._submit(m, 0, index, rows[r], theta[r] if theta.ndim == 2 else theta)
        m.points.append(self._point(layers[0], rows, theta, m.jacobians))
        if not self._frozen_made:  # while the first replies are awaited: the copy the
            self._frozen_pool.append(self._new_frozen())  # first evaluation needs
        scores = None
        while scores is None:
            entry, owner, y = self._reply_for(_Chunk)
            scores = self._measured(m, owner, entry, y)
        self._keep_fed()
        loss = self.loss_sum(scores, labels) / batch
        loss.backward()
        return Step(loss.item(), scores.detach(), self.instrument_s - began)

    def _measured(self, m: _Minibatch, chunk: _Chunk, entry: _InFlight, y: torch.Tensor
                  ) -> torch.Tensor | None:
        """A step's reply: the chunk's next request (computed without gradients); once the
        layer is measured for the whole minibatch, its output with the graph (and the model
        at the next layer's rows); after the last layer, the scores."""
        k, index = chunk.layer, chunk.index
        layer = m.layers[k]
        m.measured[k][index] = y
        m.arrays[k][index] = entry.xn, entry.tn
        m.waiting[k] -= 1
        if k + 1 < len(m.layers):
            n = m.chunks[index].stop - m.chunks[index].start
            with torch.no_grad():
                h = y.reshape(n, layer.units * layer.output_dim)
                self._submit(m, k + 1, index, *m.graph_inputs(k + 1, h))
        if m.waiting[k]:
            return None
        y_all = torch.cat(m.measured[k])
        if layer.recorder is not None:  # the minibatch's rows at once, as the plain loop
            layer.recorder(*m.joined(m.arrays[k]), to_host(y_all))
        out = MeasuredPAT.apply(*m.inputs[k], m.points[k], y_all).reshape(
            y_all.shape[0] // layer.units, layer.units * layer.output_dim)
        if k + 1 < len(m.layers):
            m.inputs.append(m.graph_inputs(k + 1, out))
            m.points.append(self._point(m.layers[k + 1], *m.joined(m.sent[k + 1]),
                                        m.jacobians))
            return None
        for block in m.segments[-1]:
            out = block(out)
        return out
