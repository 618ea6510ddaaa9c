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

Evaluations (``Pipeline.evaluate``) measure a frozen copy of the network in the gaps a step
leaves (see ``Pipeline``): exact, and the training steps are unchanged.

One step stale (``Pipeline.train_epoch``, opt-in): what the exact step cannot hide is the
minibatch boundary, where the last chunk's reply, its backward pass, the optimiser step and
the next minibatch's first request (plus the daemon's hand-offs) all wait on each other;
and every extra chunk costs the daemon about a millisecond of dead time between requests.
``train_epoch`` keeps *two minibatches* in flight instead of chunks: minibatch ``k+1``'s
first request is sent before minibatch ``k``'s backward pass and optimiser step, so the
instrument measures it while the trainer computes. Minibatch ``k+1`` therefore runs
(forward on the hardware and backward through the model, consistently) on a replica of the
network with the parameters ``theta_k`` it had when its first request was sent, and its
gradient is applied at step ``k+1`` to ``theta_{k+1}``: SGD/Adam with gradients one step
stale (minibatch 0: not stale). This is *not* the plain loop's algorithm;
``tests/bench/test_pipeline.py`` checks that it is exactly delayed-gradient SGD, and
``docs/performance.md`` compares the accuracy it trains to.

Contract: ``pipelined_step(net, x, labels, loss_sum, chunk)`` runs forward (hardware) and
backward (digital model) for one minibatch and leaves the gradients in the parameters (the
caller zeroes them before and steps the optimiser after) and returns a ``Step``: the
minibatch's mean loss, its scores (detached) and the instrument seconds its replies reported
(``elapsed_s``). Every physical layer needs ``hardware.client`` with ``submit(system, x, theta)
-> id`` and ``result(id) -> ForwardResult`` (``LabClient``); inputs are clipped into range and
shots counted in ``hardware.queries`` as ``Hardware.forward`` does.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

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


def _send(layer: PhysicalLayer, rows: torch.Tensor, theta: torch.Tensor
          ) -> tuple[np.ndarray, np.ndarray, str]:
    """Send one request (clipped into range, shots counted as ``Hardware.forward`` does)."""
    hw = layer.hardware
    if hw is None:
        raise RuntimeError(f"layer on {layer.system!r} has no hardware to measure on")
    xn = np.clip(rows.numpy(), *hw.input_range).astype(np.float32, copy=False)
    tn = np.clip(theta.numpy(), *hw.param_range).astype(np.float32, copy=False)
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

    def __init__(self, n: int) -> None:
        self.parts: dict[int, torch.Tensor] = {}
        self.n = n
        self.remaining = 0

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
    flow: Generator[Request, torch.Tensor, torch.Tensor]
    evaluation: Evaluation
    start: int
    request: Request | None = None  # the next request, computed, not yet sent


@dataclass(slots=True)
class _TrainFlow:
    flow: Generator[Request, Any, torch.Tensor]
    rows: slice
    minibatch: int = 0


@dataclass(slots=True)
class _Chunk:
    """A chunk of a batched step: its no-gradient forward and the layer it is at."""

    flow: Generator[Request, torch.Tensor, torch.Tensor]
    index: int
    layer: int = 0


@dataclass(slots=True)
class _InFlight:
    rid: str
    layer: PhysicalLayer
    xn: np.ndarray
    tn: np.ndarray
    owner: _TrainFlow | _EvalFlow | _Chunk
    point: ModelPoint | None = None


Owner = TypeVar("Owner", _TrainFlow, _Chunk)


class Pipeline:
    """Pipelined PAT steps and evaluations on the same hardware, keeping its queue fed.

    ``step(x, labels)`` is ``pipelined_step``. ``evaluate(x)`` queues an evaluation (no
    gradient) of the network *as it is now*: a frozen copy (parameters and buffers; hardware
    and digital models shared) is cut into chunks of ``eval_chunk`` rows whose requests are
    sent as *fillers*, one at a time: one queued right behind a step's last request (it is
    measured while the trainer waits for that reply, back-propagates the last chunk, steps
    the optimiser and sends the next minibatch's first requests: the gap the wavefront
    cannot hide), and one whenever the daemon's queue would otherwise be empty while the
    trainer computes. The parameters a filler measures
    are those of the frozen copy, so an evaluation is exactly the evaluation of the network
    at the moment ``evaluate`` was called, whenever its shots happen; training steps are
    untouched (their requests only wait behind a filler in the daemon's FIFO queue).
    ``drain()`` sends every outstanding evaluation request back to back (a wavefront, like
    training chunks) and waits for them all. ``batched`` (default): the model's work of a
    step is done once per layer for the whole minibatch (``_step_batched``) instead of once
    per chunk; the same gradient for a third less trainer CPU. ``instrument_s`` adds up
    every reply's ``elapsed_s`` (training and evaluation).
    """

    def __init__(self, net: PhysicalNetwork,
                 loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 chunk: int, eval_chunk: int | None = None, fill: bool = True,
                 batched: bool = True) -> None:
        self.net = net
        self.loss_sum = loss_sum
        self.chunk = chunk
        self.eval_chunk = eval_chunk or chunk
        self.fill = fill
        self.batched = batched
        self.inflight: deque[_InFlight] = deque()  # in the order sent: answered FIFO
        self.fillers: deque[_EvalFlow] = deque()  # evaluation chunks with a request ready
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
        frozen = self._copy(recorder=False)  # evaluation shots are not training data
        frozen.set_path("hardware")
        frozen.eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return frozen

    def evaluate(self, x: torch.Tensor) -> Evaluation:
        frozen = self._frozen()
        evaluation = Evaluation(x.shape[0])
        for rows in _even(x.shape[0], self.eval_chunk):
            flow = _EvalFlow(_eval_forward(frozen, x[rows]), evaluation, rows.start)
            with torch.inference_mode():
                flow.request = next(flow.flow)
            evaluation.remaining += 1
            self.fillers.append(flow)
        return evaluation

    def _send_filler(self) -> bool:
        if not self.fillers:
            return False
        flow = self.fillers.popleft()
        assert flow.request is not None
        layer, rows, theta = flow.request
        flow.request = None
        xn, tn, rid = _send(layer, rows, theta)
        self.inflight.append(_InFlight(rid, layer, xn, tn, flow))
        return True

    def _advance_eval(self, flow: _EvalFlow, y: torch.Tensor, eager: bool) -> None:
        try:
            with torch.inference_mode():
                flow.request = flow.flow.send(y)
        except StopIteration as done:
            flow.evaluation.parts[flow.start] = done.value
            flow.evaluation.remaining -= 1
            return
        if eager:
            self._send_filler_of(flow)
        else:
            self.fillers.append(flow)

    def _send_filler_of(self, flow: _EvalFlow) -> None:
        self.fillers.appendleft(flow)
        self._send_filler()

    # -- replies --------------------------------------------------------------------------

    def _collect(self, eager: bool = False) -> tuple[_InFlight, torch.Tensor]:
        """Wait for the oldest request in flight; evaluation replies are handled here."""
        entry = self.inflight.popleft()
        hw = entry.layer.hardware
        assert hw is not None
        result = hw.client.result(entry.rid)
        self.instrument_s += result.elapsed_s
        y = torch.from_numpy(np.array(result.y, dtype=np.float32))
        if isinstance(entry.owner, _EvalFlow):
            self._advance_eval(entry.owner, y, eager)
        elif entry.layer.recorder is not None:
            entry.layer.recorder(entry.xn, entry.tn, y.numpy())
        return entry, y

    def _reply_for(self, kind: type[Owner]) -> tuple[_InFlight, Owner, torch.Tensor]:
        """Collect replies (``_collect`` handles evaluation ones) until one for a flow of type
        ``kind`` arrives: its entry, its flow and the measured ``y``."""
        while True:
            entry, y = self._collect()
            if isinstance(entry.owner, kind):
                return entry, entry.owner, y

    def drain(self) -> None:
        """Send every outstanding evaluation request (wavefront) and wait for all replies."""
        while self.fillers:
            self._send_filler()
        while self.inflight:
            self._collect(eager=True)

    # -- training -------------------------------------------------------------------------

    def _submit_train(self, flow: _TrainFlow, request: Request) -> None:
        layer, rows, theta = request
        xn, tn, rid = _send(layer, rows, theta)
        # while it is measured: the model at the same point, with its graph
        self.inflight.append(_InFlight(rid, layer, xn, tn, flow, ModelPoint.of(layer, rows,
                                                                               theta)))

    def _keep_fed(self) -> None:
        """Before the trainer computes: if nothing is queued, send an evaluation filler."""
        if self.fill and not self.inflight:
            self._send_filler()

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> Step:
        """``pipelined_step`` (module docstring), with evaluation fillers (class docstring)."""
        if self.batched:
            return self._step_batched(x, labels)
        batch = x.shape[0]
        pending = 0
        # requests of this step still to send: once the last one is sent, a filler queues
        # behind it, measured while the trainer waits for that reply and computes
        to_send = -(-batch // self.chunk) * len(self.net.physical_layers())
        for start in range(0, batch, self.chunk):
            flow = _TrainFlow(_chunk_forward(self.net, x[start:start + self.chunk]),
                              slice(start, min(start + self.chunk, batch)))
            self._submit_train(flow, next(flow.flow))
            pending += 1
            to_send -= 1
        if to_send == 0 and self.fill:
            self._send_filler()
        parts: list[tuple[slice, torch.Tensor]] = []
        total = 0.0
        began = self.instrument_s
        while pending:
            entry, owner, y = self._reply_for(_TrainFlow)
            assert entry.point is not None
            try:
                request = owner.flow.send((entry.point, y))
            except StopIteration as done:
                pending -= 1
                self._keep_fed()
                scores = done.value
                loss = self.loss_sum(scores, labels[owner.rows]) / batch
                loss.backward()
                total += loss.item()
                parts.append((owner.rows, scores.detach()))
                continue
            self._submit_train(owner, request)
            to_send -= 1
            if to_send == 0 and self.fill:
                self._send_filler()
        self._keep_fed()
        parts.sort(key=lambda p: p[0].start)
        return Step(total, torch.cat([s for _, s in parts]), self.instrument_s - began)

    def _step_batched(self, x: torch.Tensor, labels: torch.Tensor) -> Step:
        """The same step with the model's work batched over the whole minibatch: chunks run
        the wavefront *without* gradients (only to compute each request); once every chunk's
        request for a layer is sent, the model is evaluated (with its graph) once at all of
        them; after the last reply the minibatch's forward is rebuilt with the measured ``y``
        and back-propagated once. Half the model evaluations and backward passes of
        ``step``; the same gradient."""
        batch = x.shape[0]
        layers = self.net.physical_layers()
        starts = list(range(0, batch, self.chunk))
        sent: list[list[Request | None]] = [[None] * len(starts) for _ in layers]
        measured: list[list[torch.Tensor | None]] = [[None] * len(starts) for _ in layers]
        points: list[ModelPoint | None] = [None] * len(layers)
        to_send = len(starts) * len(layers)
        began = self.instrument_s

        def submit(chunk: _Chunk, request: Request) -> None:
            nonlocal to_send
            layer, rows, theta = request
            xn, tn, rid = _send(layer, rows, theta)
            self.inflight.append(_InFlight(rid, layer, xn, tn, chunk))
            sent[chunk.layer][chunk.index] = request
            to_send -= 1
            if to_send == 0 and self.fill:
                self._send_filler()
            if all(r is not None for r in sent[chunk.layer]):  # the model at all of them
                requests = [r for r in sent[chunk.layer] if r is not None]
                theta = requests[0][2]
                if theta.ndim == 2:
                    theta = torch.cat([r[2] for r in requests])
                points[chunk.layer] = ModelPoint.of(layer, torch.cat([r[1] for r in requests]),
                                                    theta)

        chunks = []
        for index, start in enumerate(starts):
            chunk = _Chunk(_eval_forward(self.net, x[start:start + self.chunk]), index)
            chunks.append(chunk)
            with torch.no_grad():
                request = next(chunk.flow)
            submit(chunk, request)
        remaining = len(starts)
        while remaining:
            _, owner, y = self._reply_for(_Chunk)
            measured[owner.layer][owner.index] = y
            try:
                with torch.no_grad():
                    request = owner.flow.send(y)
            except StopIteration:
                remaining -= 1
                continue
            owner.layer += 1
            submit(owner, request)
        self._keep_fed()
        # the minibatch's forward with the measured outputs, then one backward pass
        h, k = x, 0
        for block in self.net.blocks:
            if isinstance(block, PhysicalLayer):
                rows, theta = block._rows(h)
                y_all = torch.cat([m for m in measured[k] if m is not None])
                h = MeasuredPAT.apply(rows, theta, points[k], y_all).reshape(
                    batch, block.units * block.output_dim)
                k += 1
            else:
                h = block(h)
        loss = self.loss_sum(h, labels) / batch
        loss.backward()
        return Step(loss.item(), h.detach(), self.instrument_s - began)

    # -- training one step stale ----------------------------------------------------------

    def _replica(self, pool: list[PhysicalNetwork]) -> PhysicalNetwork:
        """A copy of the network at its current parameters (hardware, digital models and
        recorder shared), taken from ``pool`` or made."""
        if pool:
            replica = pool.pop()
            with torch.no_grad():
                for mine, live in zip(replica.parameters(), self.net.parameters(), strict=True):
                    mine.copy_(live)
            return replica
        replica = self._copy(recorder=True)
        for p in replica.parameters():
            p.grad = None
        return replica

    def train_epoch(self, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    opt: torch.optim.Optimizer) -> list[float]:
        """Minibatches ``batches`` with the optimiser ``opt``, two minibatches in flight:
        gradients one step stale (module docstring, "one step stale"). Returns each
        minibatch's mean loss. The optimiser steps here (``zero_grad`` included)."""
        pool: list[PhysicalNetwork] = []
        replicas: dict[int, PhysicalNetwork] = {}
        pending: dict[int, int] = {}  # minibatch -> chunks not yet back-propagated
        losses = [0.0] * len(batches)

        def start(k: int) -> None:
            replica = replicas[k] = self._replica(pool)
            x = batches[k][0]
            pending[k] = 0
            for begin in range(0, x.shape[0], self.chunk):
                flow = _TrainFlow(_chunk_forward(replica, x[begin:begin + self.chunk]),
                                  slice(begin, min(begin + self.chunk, x.shape[0])), k)
                self._submit_train(flow, next(flow.flow))
                pending[k] += 1

        for k in range(min(2, len(batches))):
            start(k)
        following = 2
        while pending:
            entry, owner, y = self._reply_for(_TrainFlow)
            assert entry.point is not None
            try:
                request = owner.flow.send((entry.point, y))
            except StopIteration as done:
                k = owner.minibatch
                pending[k] -= 1
                self._keep_fed()
                labels = batches[k][1]
                loss = self.loss_sum(done.value, labels[owner.rows]) / labels.shape[0]
                loss.backward()
                losses[k] += loss.item()
                if pending[k]:
                    continue
                del pending[k]
                replica = replicas.pop(k)
                for live, mine in zip(self.net.parameters(), replica.parameters(),
                                      strict=True):
                    live.grad, mine.grad = mine.grad, None
                opt.step()
                opt.zero_grad()
                pool.append(replica)
                if following < len(batches):
                    start(following)
                    following += 1
                continue
            self._submit_train(owner, request)
        self._keep_fed()
        return losses


def pipelined_step(net: PhysicalNetwork, x: torch.Tensor, labels: torch.Tensor,
                   loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   chunk: int) -> Step:
    """Forward on the hardware and backward for one minibatch, pipelined (module docstring).

    ``loss_sum(scores, labels)`` must return the *sum* of per-sample losses (e.g.
    ``CrossEntropyLoss(reduction="sum")``); the gradient left in the parameters is that of the
    mean over the minibatch.
    """
    return Pipeline(net, loss_sum, chunk, fill=False, batched=False).step(x, labels)
