"""Variants of the trainer's pipelined PAT step that ``labd train`` does not use, kept for the
duty-cycle benchmark (``benchmarks/duty.py``; their figures are in ``docs/performance.md``).

``VariantPipeline(net, loss_sum, chunk, eval_chunk, batched, jacobians, wide)`` is
``labd.train.pipeline.Pipeline`` with:

* ``batched=False``: the model evaluated and back-propagated per chunk, each chunk's own graph
  (``step`` as a wavefront of chunk forwards), instead of once per layer and minibatch; the
  same gradient;
* ``jacobians``: ``True``/``False`` forces per-row Jacobians on or off (``None``: automatic);
* ``wide=(short, long)``: while evaluation fillers are left, one request per layer and
  minibatch, a ``short``-row filler behind each layer's request but the last and a
  ``long``-row one behind the last (``filler_sizes``); the same gradient;
* ``train_epoch(batches, opt)``: two minibatches in flight, minibatch ``k + 1`` measured and
  back-propagated on a replica with the parameters before step ``k``: SGD/Adam with gradients
  one step stale, *not* the plain loop's algorithm.

``pipelined_step(net, x, labels, loss_sum, chunk)``: one unbatched step, no evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch

from labd.train.layers import PhysicalLayer, PhysicalNetwork
from labd.train.pipeline import (
    Evaluation,
    MeasuredPAT,
    ModelPoint,
    Pipeline,
    Request,
    Step,
    _eval_forward,
    _EvalFlow,
    _even,
    _InFlight,
    _Minibatch,
    _send,
)


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


def filler_sizes(samples: int, layers: int, steps: int) -> tuple[int, int]:
    """``VariantPipeline(wide=...)`` for an evaluation of ``samples`` after every epoch of ``steps``
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


@dataclass(slots=True)
class _TrainFlow:
    """A chunk of an unbatched step on its way through the layers."""

    flow: Generator[Request, Any, torch.Tensor]
    rows: slice
    minibatch: int = 0
    point: ModelPoint | None = None  # the model at its request in flight


@dataclass(slots=True)
class _WideFlow(_EvalFlow):
    short: bool = False  # a short filler (between layers), not a long one (after the last)


class VariantPipeline(Pipeline):
    """``Pipeline`` with the variants of the module docstring."""

    def __init__(self, net: PhysicalNetwork,
                 loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 chunk: int, eval_chunk: int | None = None, batched: bool = True,
                 jacobians: bool | None = None, wide: tuple[int, int] | None = None) -> None:
        super().__init__(net, loss_sum, chunk, eval_chunk)
        self.batched = batched
        self.jacobians = jacobians
        self.wide = None if wide is None else (min(wide[0], self.most),
                                               min(wide[1], self.most))
        self._wide_now = False  # this step is wide (fillers were left when it began)

    # -- wide -----------------------------------------------------------------------------

    def evaluate(self, x: torch.Tensor) -> Evaluation:
        if self.wide is None:
            return super().evaluate(x)
        frozen = self._frozen()
        evaluation = Evaluation(x.shape[0], frozen)
        n = x.shape[0]
        between = len(self.net.physical_layers()) - 1  # short fillers per step
        short, long = self.wide
        if not between or not short or n < 2 * (between + 1):
            parts = [(rows, False) for rows in _even(n, max(1, long))]
        else:  # per long chunk, ``between`` short ones: each gives a filler per layer
            groups = -(-n // (between * short + long))
            n_short = round(n * between * short / (between * short + long))
            n_short = min(n - groups, max(between * groups, n_short))
            parts = [(r, True) for r in _even(n_short, -(-n_short // (between * groups)))]
            parts += [(slice(n_short + r.start, n_short + r.stop), False)
                      for r in _even(n - n_short, -(-(n - n_short) // groups))]
        for rows, is_short in parts:
            self.fillers.append(_WideFlow(_eval_forward(frozen, x[rows]), evaluation,
                                          rows.start, x[rows], short=is_short))
            evaluation.remaining += 1
        return evaluation

    def _send_filler(self, short: bool | None = None) -> bool:
        """The next filler (with ``short``, preferably one of that kind)."""
        if short is not None and self.fillers:
            flow = next((f for f in self.fillers if getattr(f, "short", False) == short),
                        None)
            if flow is not None:
                self.fillers.remove(flow)
                self.fillers.appendleft(flow)
        return super()._send_filler()

    def _chunk_size(self, batch: int) -> int:
        return min(batch, self.most) if self._wide_now else self.chunk

    def _sent(self, m: _Minibatch, k: int) -> None:
        if m.to_send == 0:
            self._send_filler(False if self._wide_now else None)
        elif self._wide_now and k + 1 < len(m.layers):
            self._send_filler(True)

    # -- unbatched ------------------------------------------------------------------------

    def step(self, x: torch.Tensor, labels: torch.Tensor) -> Step:
        if self.batched:
            self._wide_now = self.wide is not None and bool(self.fillers)
            return super().step(x, labels)
        return self._step_chunks(x, labels)

    def _submit_train(self, flow: _TrainFlow, request: Request) -> None:
        layer, rows, theta = request
        xn, tn, rid = _send(layer, rows, theta)
        self.inflight.append(_InFlight(rid, layer, xn, tn, flow))
        # while it is measured: the model at the same point, with its graph
        flow.point = ModelPoint.of(layer, rows, theta)

    def _collect(self, eager: bool = False) -> tuple[_InFlight, torch.Tensor]:
        entry, y = super()._collect(eager)
        if isinstance(entry.owner, _TrainFlow) and entry.layer.recorder is not None:
            entry.layer.recorder(entry.xn, entry.tn, y.numpy())
        return entry, y

    def _step_chunks(self, x: torch.Tensor, labels: torch.Tensor) -> Step:
        """The step as a wavefront of chunk forwards, each with its own graph."""
        batch = x.shape[0]
        pending = 0
        to_send = -(-batch // self.chunk) * len(self.net.physical_layers())
        for start in range(0, batch, self.chunk):
            flow = _TrainFlow(_chunk_forward(self.net, x[start:start + self.chunk]),
                              slice(start, min(start + self.chunk, batch)))
            self._submit_train(flow, next(flow.flow))
            pending += 1
            to_send -= 1
        if to_send == 0:
            self._send_filler()
        parts: list[tuple[slice, torch.Tensor]] = []
        total = 0.0
        began = self.instrument_s
        while pending:
            _, owner, y = self._reply_for(_TrainFlow)
            try:
                request = owner.flow.send((owner.point, y))
            except StopIteration as done:
                pending -= 1
                self._keep_fed()
                loss = self.loss_sum(done.value, labels[owner.rows]) / batch
                loss.backward()
                total += loss.item()
                parts.append((owner.rows, done.value.detach()))
                continue
            self._submit_train(owner, request)
            to_send -= 1
            if to_send == 0:
                self._send_filler()
        self._keep_fed()
        parts.sort(key=lambda p: p[0].start)
        return Step(total, torch.cat([s for _, s in parts]), self.instrument_s - began)

    # -- one step stale -------------------------------------------------------------------

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
        """Minibatches ``batches`` with the optimiser ``opt``, two in flight, gradients one
        step stale (module docstring); each minibatch's mean loss. The optimiser steps here
        (``zero_grad`` included)."""
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
            _, owner, y = self._reply_for(_TrainFlow)
            try:
                request = owner.flow.send((owner.point, y))
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
                self._apply(replicas.pop(k), opt, pool)
                if following < len(batches):
                    start(following)
                    following += 1
                continue
            self._submit_train(owner, request)
        self._keep_fed()
        return losses

    def _apply(self, replica: PhysicalNetwork, opt: torch.optim.Optimizer,
               pool: list[PhysicalNetwork]) -> None:
        """A replica's gradient applied to the network by one optimiser step."""
        for live, mine in zip(self.net.parameters(), replica.parameters(), strict=True):
            live.grad, mine.grad = mine.grad, None
        opt.step()
        opt.zero_grad()
        pool.append(replica)


def pipelined_step(net: PhysicalNetwork, x: torch.Tensor, labels: torch.Tensor,
                   loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   chunk: int) -> Step:
    """Forward on the hardware and backward for one minibatch, unbatched, no evaluation.

    ``loss_sum(scores, labels)`` must return the *sum* of per-sample losses; the gradient left
    in the parameters is that of the mean over the minibatch.
    """
    return VariantPipeline(net, loss_sum, chunk, batched=False).step(x, labels)
