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
-> id`` and ``result(id, retry=True) -> ForwardResult`` (``LabClient``: retryable failures are
sent again with the same id, as ``measure`` does); inputs are clipped into range and shots
counted in ``hardware.queries`` as ``Hardware.forward`` does.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from labd.train.layers import PhysicalLayer, PhysicalNetwork

#: Layers with at most this many outputs get Jacobians in steps no evaluation fills
#: (``Pipeline(jacobians=None)``): 12 outputs (SHG) cost 4.3 ms for 21 rows, in the gaps.
JACOBIAN_OUTPUTS = 16

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
            basis = torch.eye(outputs, dtype=y.dtype).unsqueeze(1).expand(outputs, rows,
                                                                          outputs)
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


def filler_sizes(samples: int, layers: int, steps: int) -> tuple[int, int]:
    """``Pipeline(wide=...)`` for an evaluation of ``samples`` after every epoch of ``steps``
    minibatches through ``layers`` physical layers: each step has ``layers - 1`` short gaps
    (a reply's hand-off and the next layer's request) and one long one (backward pass,
    optimiser step, next minibatch), and one evaluation gives ``samples * layers / steps``
    shots per step: the short fillers get a fifth of them, the long one the rest (SHG vowels:
    49 * 2 / 10 = 9.8 shots per step, 2 and 8: best of 3-7, 2-8, 4-6 and 1-9 measured)."""
    per_step = samples * layers / max(1, steps)
    if layers < 2:
        return 0, max(1, round(per_step))
    short = max(1, round(0.2 * per_step / (layers - 1)))
    return short, max(1, round(per_step - short * (layers - 1)))


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
    flow: Generator[Request, torch.Tensor, torch.Tensor]
    evaluation: Evaluation
    start: int
    request: Request | None = None  # the next request, computed, not yet sent (None
    # before the first: computed when sent)
    short: bool = False  # a short filler (``Pipeline.wide``): between layers, not at the end
    x: torch.Tensor | None = None  # its input rows


@dataclass(slots=True)
class _TrainFlow:
    flow: Generator[Request, Any, torch.Tensor]
    rows: slice
    minibatch: int = 0


@dataclass(slots=True)
class _Chunk:
    """A chunk of a batched step: its index and the layer of the request in flight."""

    index: int
    layer: int


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
    training chunks; an evaluation not started at all in two chunks) and waits for them all.
    ``batched`` (default): the model's work of a step is done once per layer for the whole
    minibatch (``_step_batched``) instead of once per chunk; the same gradient for a third
    less trainer CPU. ``instrument_s`` adds up every reply's ``elapsed_s`` (training and
    evaluation).

    ``wide=(short, long)`` (batched): while evaluation fillers are left, a step sends one
    request per layer (the whole minibatch) instead of ``chunk``-row chunks, with a
    ``short``-row filler behind each layer's request but the last (measured while the reply
    is handed over and the next layer's request computed) and a ``long``-row one behind the
    last (the backward pass, optimiser step and next minibatch); ``evaluate`` cuts its rows
    into short and long chunks accordingly (``filler_sizes``). Fewer requests, each costing
    the daemon its dead time, for the same shots; fillers too short for the gaps (under
    load) leave the instrument idle. ``jacobians`` (batched): per-row Jacobians of the model
    (``JacobianPoint``) instead of its graph, so that the backward pass after the last reply
    is cheap; ``None`` (default): in steps with no filler to cover that backward pass (the
    first epoch), for layers of at most ``JACOBIAN_OUTPUTS`` outputs, and not for a model
    whose Jacobian failed once (a custom autograd function that ``vmap`` cannot batch).
    """

    def __init__(self, net: PhysicalNetwork,
                 loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 chunk: int, eval_chunk: int | None = None, fill: bool = True,
                 batched: bool = True, jacobians: bool | None = None,
                 wide: tuple[int, int] | None = None) -> None:
        self.net = net
        self.jacobians = jacobians
        # every request within the daemons' message limits (whole samples)
        self.most = samples_per_request(net.physical_layers()) or sys.maxsize
        self.wide = None if wide is None else (min(wide[0], self.most),
                                               min(wide[1], self.most))
        self.loss_sum = loss_sum
        self.chunk = min(chunk, self.most)
        self.eval_chunk = min(eval_chunk or chunk, self.most)
        self.fill = fill
        self.batched = batched
        self.inflight: deque[_InFlight] = deque()  # in the order sent: answered FIFO
        self.fillers: deque[_EvalFlow] = deque()  # evaluation chunks with a request to send
        self._frozen_pool: list[PhysicalNetwork] = []  # copies of finished evaluations
        self._frozen_made = 0
        self._no_jacobians: set[int] = set()  # models whose Jacobians failed (automatic mode)
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
        """A copy of the network as it is now, for an evaluation: one whose evaluation is
        finished, its parameters and buffers overwritten (a deep copy costs ~3 ms, on the
        critical path at the end of an epoch), else a new one."""
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
        frozen = self._frozen()
        evaluation = Evaluation(x.shape[0], frozen)
        n = x.shape[0]
        between = len(self.net.physical_layers()) - 1  # short fillers per step (wide)
        if self.wide is None:
            parts = [(rows, False) for rows in _even(n, self.eval_chunk)]
        elif not between or not self.wide[0] or n < 2 * (between + 1):
            parts = [(rows, False) for rows in _even(n, max(1, self.wide[1]))]
        else:  # per long chunk, ``between`` short ones: each gives a filler per layer
            short, long = self.wide
            groups = -(-n // (between * short + long))
            n_short = round(n * between * short / (between * short + long))
            n_short = min(n - groups, max(between * groups, n_short))
            parts = [(slice(r.start, r.stop), True)
                     for r in _even(n_short, -(-n_short // (between * groups)))]
            parts += [(slice(n_short + r.start, n_short + r.stop), False)
                      for r in _even(n - n_short, -(-(n - n_short) // groups))]
        for rows, is_short in parts:
            # the first request is computed when the filler is sent
            self.fillers.append(_EvalFlow(_eval_forward(frozen, x[rows]), evaluation,
                                          rows.start, short=is_short, x=x[rows]))
            evaluation.remaining += 1
        return evaluation

    def _send_filler(self, short: bool | None = None) -> bool:
        """Send the next filler (with ``short``, preferably one of that kind)."""
        if not self.fillers:
            return False
        flow = self.fillers[0]
        if short is not None and flow.short != short:
            flow = next((f for f in self.fillers if f.short == short), flow)
        self.fillers.remove(flow)
        if flow.request is None:
            with torch.inference_mode():
                flow.request = next(flow.flow)
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
            evaluation = flow.evaluation
            evaluation.parts[flow.start] = done.value
            evaluation.remaining -= 1
            if evaluation.done and evaluation.network is not None:
                self._frozen_pool.append(evaluation.network)  # free for the next evaluation
                evaluation.network = None
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
        result = hw.client.result(entry.rid, retry=True)  # retried as ``measure`` is
        self.instrument_s += result.elapsed_s
        y = torch.from_numpy(np.array(result.y, dtype=np.float32))
        if isinstance(entry.owner, _EvalFlow):
            self._advance_eval(entry.owner, y, eager)
        elif entry.layer.recorder is not None and not isinstance(entry.owner, _Chunk):
            entry.layer.recorder(entry.xn, entry.tn, y.numpy())  # (a batched step records
            # each layer's minibatch at once, as the plain loop does)
        return entry, y

    def _reply_for(self, kind: type[Owner]) -> tuple[_InFlight, Owner, torch.Tensor]:
        """Collect replies (``_collect`` handles evaluation ones) until one for a flow of type
        ``kind`` arrives: its entry, its flow and the measured ``y``."""
        while True:
            entry, y = self._collect()
            if isinstance(entry.owner, kind):
                return entry, entry.owner, y

    def drain(self) -> None:
        """Send every outstanding evaluation request (wavefront) and wait for all replies.
        An evaluation none of whose requests was sent yet (the last one of a training) is cut
        again into two chunks (sizes for fillers are of no use here, and every request costs
        the daemon its dead time)."""
        for evaluation in {id(f.evaluation): f.evaluation for f in self.fillers}.values():
            flows = sorted((f for f in self.fillers if f.evaluation is evaluation),
                           key=lambda f: f.start)
            if (len(flows) <= 2 or evaluation.network is None or evaluation.parts
                    or evaluation.remaining != len(flows)
                    or any(f.request is not None or f.x is None for f in flows)):
                continue
            for f in flows:
                self.fillers.remove(f)
            x = torch.cat([f.x for f in flows if f.x is not None])
            halves = _even(x.shape[0], min(-(-x.shape[0] // 2), self.most))
            for rows in halves:
                self.fillers.append(_EvalFlow(_eval_forward(evaluation.network, x[rows]),
                                              evaluation, rows.start, x=x[rows]))
            evaluation.remaining = len(halves)
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

    def _jacobians(self, layers: list[PhysicalLayer]) -> bool:
        """Whether this step computes Jacobians (``jacobians``; ``None``: when no evaluation
        fills the gap after the step, and every layer has few outputs, since a Jacobian
        costs a backward pass per output)."""
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

    def _step_batched(self, x: torch.Tensor, labels: torch.Tensor) -> Step:
        """The same step with the model's work batched over the whole minibatch: chunks run
        the wavefront *without* gradients (only to compute each request); the minibatch's
        forward with its graph is built layer by layer, as soon as every chunk of the
        previous layer is measured, and the model is evaluated (with its graph) once per
        layer at all chunks' rows, as soon as they are all sent (while they are measured).
        After the last reply only the last layer's output, the digital blocks after it, the
        loss and one backward pass remain. Half the model evaluations and backward passes
        of ``step``; the same gradient."""
        batch = x.shape[0]
        layers, segments = self._segments()
        wide = self.wide is not None and self.fill and bool(self.fillers)
        jacobians = self._jacobians(layers)
        chunk = min(batch, self.most) if wide else self.chunk
        chunks = [slice(start, min(start + chunk, batch)) for start in range(0, batch, chunk)]
        sent: list[list[tuple[torch.Tensor, torch.Tensor] | None]] = [
            [None] * len(chunks) for _ in layers]
        measured: list[list[torch.Tensor | None]] = [[None] * len(chunks) for _ in layers]
        sent_arrays: list[list[tuple[np.ndarray, np.ndarray] | None]] = [
            [None] * len(chunks) for _ in layers]  # what went to the hardware (for a recorder)
        waiting = [len(chunks)] * len(layers)  # replies still to come, per layer
        to_send = len(chunks) * len(layers)
        began = self.instrument_s

        def rows_of(layer: PhysicalLayer, c: slice) -> slice:
            return slice(c.start * layer.units, c.stop * layer.units)

        def submit(k: int, index: int, rows: torch.Tensor, theta: torch.Tensor) -> None:
            nonlocal to_send
            layer = layers[k]
            xn, tn, rid = _send(layer, rows, theta)
            self.inflight.append(_InFlight(rid, layer, xn, tn, _Chunk(index, k)))
            sent[k][index] = (rows, theta)
            to_send -= 1
            if to_send == 0 and self.fill:
                self._send_filler(False if wide else None)
            elif wide and k + 1 < len(layers):
                self._send_filler(True)

        def graph_inputs(k: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Layer ``k``'s rows and parameters for the minibatch, with their graph, from
            the output ``h`` of the previous layer (or the input)."""
            for block in segments[k]:
                h = block(h)
            return layers[k]._rows(h)

        def point(k: int) -> ModelPoint:
            """The model at every row sent for layer ``k`` (once all are sent)."""
            parts = [p for p in sent[k] if p is not None]
            theta = parts[0][1]
            if theta.ndim == 2:
                theta = torch.cat([p[1] for p in parts])
            return self._point(layers[k], torch.cat([p[0] for p in parts]), theta, jacobians)

        inputs = [graph_inputs(0, x)]
        rows, theta = inputs[0][0].detach(), inputs[0][1].detach()
        for index, c in enumerate(chunks):
            r = rows_of(layers[0], c)
            submit(0, index, rows[r], theta[r] if theta.ndim == 2 else theta)
        points = [self._point(layers[0], rows, theta, jacobians)]
        if self.fill and not self._frozen_made:  # while the first replies are awaited: the
            self._frozen_pool.append(self._new_frozen())  # copy the first evaluation needs
        scores: torch.Tensor | None = None
        while scores is None:
            entry, owner, y = self._reply_for(_Chunk)
            k, index = owner.layer, owner.index
            measured[k][index] = y
            sent_arrays[k][index] = entry.xn, entry.tn
            waiting[k] -= 1
            layer = layers[k]
            if k + 1 < len(layers):  # this chunk's next request, without gradients
                n = chunks[index].stop - chunks[index].start
                with torch.no_grad():
                    submit(k + 1, index, *graph_inputs(
                        k + 1, y.reshape(n, layer.units * layer.output_dim)))
            if waiting[k]:
                continue
            # layer k measured for the whole minibatch: its output with the graph
            y_all = torch.cat([m for m in measured[k] if m is not None])
            if layer.recorder is not None:  # the minibatch's rows at once, as the plain loop
                arrays = [a for a in sent_arrays[k] if a is not None]
                tn = arrays[0][1]
                layer.recorder(np.concatenate([a[0] for a in arrays]),
                               np.concatenate([a[1] for a in arrays]) if tn.ndim == 2 else tn,
                               y_all.numpy())
            out = MeasuredPAT.apply(*inputs[k], points[k], y_all).reshape(
                batch, layer.units * layer.output_dim)
            if k + 1 < len(layers):
                inputs.append(graph_inputs(k + 1, out))
                points.append(point(k + 1))
            else:
                for block in segments[-1]:
                    out = block(out)
                scores = out
        self._keep_fed()
        loss = self.loss_sum(scores, labels) / batch
        loss.backward()
        return Step(loss.item(), scores.detach(), self.instrument_s - began)

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
