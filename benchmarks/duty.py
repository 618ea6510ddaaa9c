"""Instrument duty cycle of PAT training: the fraction of wall time the instrument measures.

The SHG vowel network (``labd.train.arch`` default for vowels on shg, backward through the
nominal model) is trained with PAT for ``--epochs`` epochs against the SHG stand-in in realtime
timing (``shot_s`` per shot, default 1 ms, as the real spectrometer's integration time), from
the same initial parameters and with the same minibatch order, and, as ``Trainer`` does,
evaluated on the hardware (test accuracy, the whole test set) after every epoch:

* ``reference``: the physical function called in-process and synchronously (no daemon, no
  network): the plain training loop with ``PhysicalSystem.measure`` as the forward and the
  plain evaluation (one call per layer);
* ``labd_sync``: the plain loop and evaluation through a daemon (``LocalDaemon``, store
  disabled), one synchronous ``forward`` per physical layer and minibatch, as ``Trainer``;
* ``labd_pipelined``: the same training through the same daemon with
  ``labd.train.pipeline.Pipeline``, as ``labd train`` runs it: each minibatch cut into
  ``--chunks`` requests per layer, in a wavefront, the model evaluated at each layer's rows
  while they are measured; the evaluations, of a frozen copy of the network, measured as
  fillers in the gaps each step leaves, the rest sent back to back at the end; in steps no
  evaluation fills (the first epoch) the model's Jacobians computed while measuring. The
  same algorithm as the plain loop (the gradients are equal, tested): the headline
  ``duty_cycle``. The options ``--unbatched``, ``--jacobians`` and ``--wide`` try the
  variants of ``benchmarks.pipeline_variants`` instead;
* ``labd_stale``: ``VariantPipeline.train_epoch`` (``benchmarks.pipeline_variants``), two
  whole minibatches in flight, gradients one step stale: a *different* algorithm
  (delayed-gradient Adam), which trains to a worse loss at this learning rate
  (``docs/performance.md``); reported for comparison only;
* ``labd_pipelined_steps`` and ``labd_stale_steps``: the same without any evaluation (the
  training steps alone, as this benchmark measured before evaluations were included).

Duty cycle = sum of the instrument time of every measurement (``elapsed_s``: the time the
instrument spent, from ``detector.arm`` to the end of ``detector.read``) over the wall time of
the whole training (steps and evaluations, until the last evaluation is measured). For the
synchronous approaches ``steps_duty_cycle`` is that of the training steps alone (their
evaluations are separable). ``steady_duty_cycle`` leaves out the first epoch (during which
the pipelined approach has no evaluation yet to fill the gaps with; a real training runs for
100 epochs). Target for the daemon: at least 90%. ``nominal_duty_cycle`` counts
``shots * shot_s`` instead: a simulated instrument's ``elapsed_s`` includes its own late
wake-ups from ``sleep`` on a loaded machine, which flatters an approach with more (smaller)
requests; the nominal figure does not.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.pipeline_variants import VariantPipeline, filler_sizes
from drivers.physics.nominal import nominal_model
from labd.client import LabClient
from labd.config import default_config_text, load_config
from labd.daemon.process import LocalDaemon
from labd.daemon.system import PhysicalSystem
from labd.train.arch import Arch, build_network, default_arch
from labd.train.datasets import Dataset, load_task
from labd.train.hardware import Hardware
from labd.train.layers import PhysicalNetwork
from labd.train.pipeline import Pipeline

DESCRIPTION = "instrument duty cycle of PAT training of SHG vowels at 1 ms per shot"

SYSTEM = "shg"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=5, help="training epochs per approach")
    p.add_argument("--chunks", type=int, default=2,
                   help="requests each minibatch is cut into per physical layer in the "
                        "pipelined approach (default 2: fewer requests cost less overhead, "
                        "more overlap more of the backward pass)")
    p.add_argument("--shot-s", type=float, default=0.001,
                   help="instrument seconds per shot, realtime timing (default 0.001)")
    p.add_argument("--eval-chunk", type=int, default=None,
                   help="rows per evaluation request in the pipelined approach (default: "
                        "the training chunk)")
    p.add_argument("--unbatched", action="store_true",
                   help="pipelined approach: the model evaluated and back-propagated per chunk "
                        "(VariantPipeline(batched=False)) instead of once per layer and minibatch")
    p.add_argument("--jacobians", choices=["auto", "on", "off"], default="auto",
                   help="pipelined approach: the model's Jacobians at each layer's rows computed "
                        "while they are measured, so that the backward pass after the last reply "
                        "is two small products per layer (VariantPipeline(jacobians=...)); auto "
                        "(default): in steps no evaluation fills, i.e. the first epoch")
    p.add_argument("--wide", type=int, nargs="*", metavar="ROWS",
                   help="pipelined approach, while evaluations are outstanding: one request per "
                        "layer and minibatch with a SHORT-row evaluation filler behind each but "
                        "the last layer's and a LONG-row one behind it (--wide SHORT LONG; "
                        "--wide alone: pipeline_variants.filler_sizes, 2 and 8 here). Default: "
                        "--chunks requests per layer and minibatch, fillers of --eval-chunk rows "
                        "(measured better since the daemon hands replies over during the next "
                        "request's shots, docs/performance.md)")
    p.add_argument("--quick", action="store_true", help="one epoch each (a smoke test)")


def main(args: argparse.Namespace) -> dict[str, Any]:
    figures = measure_duty(1 if args.quick else args.epochs, args.chunks, args.shot_s,
                           eval_chunk=args.eval_chunk, batched=not args.unbatched,
                           jacobians={"auto": None, "on": True, "off": False}[args.jacobians],
                           wide=False if args.wide is None else tuple(args.wide) or None)
    for name in APPROACHES:
        f = figures[name]
        steps = (f"   steps alone {100 * f['steps_duty_cycle']:5.1f}%"
                 if "steps_duty_cycle" in f else "")
        test = (f"   test acc {100 * f['final_test_accuracy']:5.1f}%"
                if "final_test_accuracy" in f else "")
        steady = (f"   after epoch 1 {100 * f['steady_duty_cycle']:5.1f}%"
                  if "steady_duty_cycle" in f else "")
        print(f"{name:<21} duty {100 * f['duty_cycle']:5.1f}% (nominal "
              f"{100 * f['nominal_duty_cycle']:5.1f}%)   {f['shots']:>6} shots   "
              f"wall {f['wall_s']:6.2f} s   loss {f['last_epoch_loss']:.3f}{test}{steps}"
              f"{steady}")
    return figures


def shg_config(shot_s: float) -> str:
    """The default configuration's SHG system alone, in realtime timing at ``shot_s``."""
    text = default_config_text()
    block = re.search(r"^\[systems\.shg\]\n(?:[^\[].*\n?)*", text, re.MULTILINE)
    if block is None:
        raise RuntimeError("no [systems.shg] table in the default configuration")
    bench = {**(load_config().systems[SYSTEM].bench or {}), "timing": "realtime",
             "shot_s": shot_s}
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in bench.items())
    return re.sub(r"^bench = .*$", f"bench = {{ {inline} }}", block.group(0), flags=re.MULTILINE)


class InProcess:
    """The reference: ``Hardware``'s interface over a ``PhysicalSystem`` in this process."""

    def __init__(self, system: PhysicalSystem) -> None:
        self.system = system
        self.description = system.describe()
        self.input_range = tuple(system.mapping.input_range)
        self.param_range = tuple(system.mapping.param_range)
        self.queries = 0
        self.instrument_s = 0.0

    def forward(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float32), *self.input_range)
        theta = np.clip(np.asarray(theta, dtype=np.float32), *self.param_range)
        y, elapsed = self.system.measure(x, theta)
        self.instrument_s += elapsed
        self.queries += int(x.shape[0])
        return y


class TimedClient:
    """A ``LabClient`` whose ``forward`` also adds up the replies' ``elapsed_s``."""

    def __init__(self, client: LabClient) -> None:
        self.client = client
        self.instrument_s = 0.0

    def describe(self, system: str) -> dict[str, Any]:
        return self.client.describe(system)

    def forward(self, system: str, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        result = self.client.measure(system, x, theta)
        self.instrument_s += result.elapsed_s
        return result.y


def _network(arch: Arch, data: Dataset, description: dict[str, Any], seed: int
             ) -> PhysicalNetwork:
    """The vowel network, its rescalings and readout initialised on the nominal model."""
    model = nominal_model(description)
    net = build_network(arch, data.n_features, data.n_classes,
                        [(description, model, None) for _ in range(arch.depth)], seed)
    net.set_path("model")
    with torch.no_grad():
        net.initialise(torch.from_numpy(data.x_train))
    net.set_path("pat")
    return net


def _optimiser(net: PhysicalNetwork, arch: Arch) -> torch.optim.Optimizer:
    """Adam with the physical and digital learning rates, as ``Trainer`` builds it, in its
    fused implementation (the same algorithm; one step costs 0.23 instead of 0.87 ms for
    this network's few small tensors, and the step is on the critical path of every
    approach)."""
    physical = [p for layer in net.physical_layers() for p in layer.parameters()]
    ids = {id(p) for p in physical}
    digital = [p for p in net.parameters() if id(p) not in ids]
    return torch.optim.Adam([{"params": physical, "lr": arch.lr},
                             {"params": digital, "lr": arch.lr_digital}], fused=True)


class _Done:
    """An evaluation that finished when it was asked for (the synchronous approaches)."""

    def __init__(self, scores: torch.Tensor) -> None:
        self.scores = scores


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _train(net: PhysicalNetwork, data: Dataset, arch: Arch, epochs: int, seed: int,
           step: Callable[[torch.Tensor, torch.Tensor], float] | None,
           evaluate: Callable[[torch.Tensor], Any] | None = None,
           finish: Callable[[], None] | None = None,
           epoch_step: Callable[[Batches, torch.optim.Optimizer], list[float]] | None = None,
           instrument: Callable[[], float] | None = None) -> dict[str, Any]:
    """``epochs`` epochs of minibatches (the order ``Trainer`` uses); ``step`` does forward
    and backward and returns the minibatch's mean loss. After every epoch, as ``Trainer``
    does, ``evaluate(x_test)`` (if given) evaluates the network on the hardware: it returns
    something whose ``scores`` are ready once ``finish()`` has returned (the pipelined
    approach measures evaluations in the gaps of the next epoch's steps). Returns the wall
    seconds (all of it, evaluations included), the seconds spent inside ``evaluate``
    (``eval_wall_s``, the synchronous approaches' evaluation time), the last epoch's mean
    loss and, with ``evaluate``, the test accuracy after each epoch."""
    opt = _optimiser(net, arch)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(data.x_test)
    net.train()
    evaluations = []
    eval_wall = 0.0
    began = time.perf_counter()
    first_epoch = (0.0, 0.0)  # wall and instrument seconds of the first epoch
    loss_sum = 0.0
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(
            seed * 100003 + epoch))
        loss_sum = 0.0
        batches = [(x[perm[i:i + arch.batch_size]], y[perm[i:i + arch.batch_size]])
                   for i in range(0, len(y), arch.batch_size)]
        if epoch_step is not None:  # the optimiser steps inside
            losses = epoch_step(batches, opt)
            loss_sum = sum(loss * len(b[1]) for loss, b in zip(losses, batches, strict=True))
        else:
            assert step is not None
            for xb, yb in batches:
                opt.zero_grad()
                loss_sum += step(xb, yb) * len(yb)
                opt.step()
        if evaluate is not None:
            t = time.perf_counter()
            evaluations.append(evaluate(x_test))
            eval_wall += time.perf_counter() - t
        if epoch == 0 and instrument is not None:
            first_epoch = (time.perf_counter() - began, instrument())
    if finish is not None:
        finish()
    wall = time.perf_counter() - began
    out: dict[str, Any] = {"wall_s": wall, "eval_wall_s": eval_wall,
                           "last_epoch_loss": loss_sum / len(y)}
    if instrument is not None and epochs > 1:
        out["steady_duty_cycle"] = (instrument() - first_epoch[1]) / (wall - first_epoch[0])
    if evaluate is not None:
        labels = torch.from_numpy(data.y_test)
        out["test_accuracy"] = [float((e.scores.argmax(1) == labels).float().mean())
                                for e in evaluations]
    return out


def _plain_evaluate(net: PhysicalNetwork) -> Callable[[torch.Tensor], _Done]:
    """``Trainer``'s evaluation: the whole test set, one request per physical layer."""
    def evaluate(x: torch.Tensor) -> _Done:
        net.set_path("hardware")
        net.eval()
        with torch.no_grad():
            scores = net(x)
        net.set_path("pat")
        net.train()
        return _Done(scores)
    return evaluate


def _figures(shots: int, instrument_s: float, run: dict[str, Any], shot_s: float,
             eval_shots: int = 0, eval_instrument_s: float = 0.0) -> dict[str, Any]:
    """Duty cycles of one run; ``eval_*`` (the synchronous approaches, whose evaluations are
    separate) also give the duty cycle of the training steps alone."""
    wall = run["wall_s"]
    out = {"duty_cycle": instrument_s / wall, "nominal_duty_cycle": shots * shot_s / wall,
           "shots": shots, "instrument_s": instrument_s, **run}
    if run.get("test_accuracy"):
        out["final_test_accuracy"] = run["test_accuracy"][-1]
    if eval_shots:
        train_wall = wall - run["eval_wall_s"]
        out["steps_duty_cycle"] = (instrument_s - eval_instrument_s) / train_wall
        out["steps_nominal_duty_cycle"] = (shots - eval_shots) * shot_s / train_wall
    return out


def _counting(evaluate: Callable[[torch.Tensor], Any], counters: Callable[[], tuple[int, float]],
              into: list[float]) -> Callable[[torch.Tensor], Any]:
    """``evaluate`` that adds the shots and instrument seconds it spends to ``into``."""
    def wrapped(x: torch.Tensor) -> Any:
        q0, s0 = counters()
        done = evaluate(x)
        q1, s1 = counters()
        into[0] += q1 - q0
        into[1] += s1 - s0
        return done
    return wrapped


APPROACHES = ("reference", "labd_sync", "labd_pipelined", "labd_pipelined_steps", "labd_stale",
              "labd_stale_steps")


@dataclass(frozen=True)
class _Setup:
    """What every approach shares: data, design, initial network, loss and sizes."""

    data: Dataset
    arch: Arch
    net0: PhysicalNetwork
    epochs: int
    seed: int
    shot_s: float

    def network(self, hardware: Any) -> PhysicalNetwork:
        net = copy.deepcopy(self.net0)
        for layer in net.physical_layers():
            layer.hardware = hardware
        return net

    def plain_step(self, net: PhysicalNetwork) -> Callable[[torch.Tensor, torch.Tensor], float]:
        def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
            loss = nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            return loss.item()
        return step


def _reference(setup: _Setup, reference: InProcess) -> dict[str, Any]:
    """The plain loop, the physical function called in-process."""
    net = setup.network(reference)
    spent = [0.0, 0.0]
    reference.system.open()
    try:
        run = _train(net, setup.data, setup.arch, setup.epochs, setup.seed,
                     setup.plain_step(net), _counting(
                         _plain_evaluate(net), lambda: (reference.queries,
                                                        reference.instrument_s), spent),
                     instrument=lambda: reference.instrument_s)
    finally:
        reference.system.close()
    return _figures(reference.queries, reference.instrument_s, run, setup.shot_s,
                    int(spent[0]), spent[1])


def _sync(setup: _Setup, client: LabClient, endpoint: str) -> dict[str, Any]:
    """The plain loop through the daemon."""
    timed = TimedClient(client)
    hw = Hardware(timed, SYSTEM, endpoint)
    net = setup.network(hw)
    spent = [0.0, 0.0]
    run = _train(net, setup.data, setup.arch, setup.epochs, setup.seed, setup.plain_step(net),
                 _counting(_plain_evaluate(net), lambda: (hw.queries, timed.instrument_s),
                           spent), instrument=lambda: timed.instrument_s)
    return _figures(hw.queries, timed.instrument_s, run, setup.shot_s, int(spent[0]), spent[1])


def _pipelined(setup: _Setup, client: LabClient, endpoint: str, evaluating: bool,
               stale: bool, chunk: int, eval_chunk: int, variant: dict[str, Any]
               ) -> dict[str, Any]:
    """The pipelined approaches: ``Pipeline`` as ``labd train`` runs it, or with ``variant``
    options or ``stale`` a ``VariantPipeline``."""
    hw = Hardware(client, SYSTEM, endpoint)
    net = setup.network(hw)
    ce_sum = nn.CrossEntropyLoss(reduction="sum")
    pipe = (VariantPipeline(net, ce_sum, chunk, eval_chunk, **variant) if variant or stale
            else Pipeline(net, ce_sum, chunk, eval_chunk))

    def step(xb: torch.Tensor, yb: torch.Tensor) -> float:
        return pipe.step(xb, yb).loss

    run = _train(net, setup.data, setup.arch, setup.epochs, setup.seed,
                 None if stale else step, pipe.evaluate if evaluating else None, pipe.drain,
                 pipe.train_epoch if stale else None,  # type: ignore[attr-defined]
                 instrument=lambda: pipe.instrument_s)
    return _figures(hw.queries, pipe.instrument_s, run, setup.shot_s)


def measure_duty(epochs: int = 5, chunks: int = 2, shot_s: float = 0.001,
                 seed: int = 0, eval_chunk: int | None = None, stale_chunks: int = 1,
                 batched: bool = True, jacobians: bool | None = None,
                 wide: tuple[int, ...] | bool | None = False) -> dict[str, Any]:
    """Duty cycles of the approaches (module docstring). ``wide``: the sizes of
    ``VariantPipeline(wide=...)``, ``None`` for ``filler_sizes``, ``False`` (default) for
    none."""
    torch.set_num_threads(1)
    data = load_task("vowels", None, None)
    arch = default_arch("vowels", SYSTEM)
    if wide is None:
        wide = filler_sizes(len(data.y_test), arch.depth,
                            -(-len(data.y_train) // arch.batch_size))
    if wide is not False and wide is not True and len(wide) != 2:
        raise ValueError(f"--wide takes two sizes (SHORT LONG) or none, got {list(wide)}")
    wide_sizes = None if wide is False or wide is True else (int(wide[0]), int(wide[1]))
    variant: dict[str, Any] = {} if batched else {"batched": False}  # labd train's: none
    if jacobians is not None:
        variant["jacobians"] = jacobians
    if wide_sizes is not None:
        variant["wide"] = wide_sizes
    chunk = -(-arch.batch_size // chunks)  # rows per request
    eval_chunk = eval_chunk or chunk
    out: dict[str, Any] = {"system": SYSTEM, "shot_s": shot_s, "epochs": epochs, "chunk": chunk,
                           "eval_chunk": eval_chunk, "batch_size": arch.batch_size,
                           "depth": arch.depth, "test_samples": len(data.y_test),
                           "batched": batched, "jacobians": jacobians, "wide": wide_sizes,
                           "backward": "nominal model"}
    with tempfile.TemporaryDirectory(prefix="labd-bench-duty-") as tmp:
        config = Path(tmp) / "shg.toml"
        config.write_text(shg_config(shot_s))
        reference = InProcess(PhysicalSystem.from_config(SYSTEM,
                                                         load_config(config).systems[SYSTEM]))
        setup = _Setup(data, arch, _network(arch, data, reference.description, seed), epochs,
                       seed, shot_s)
        out["reference"] = _reference(setup, reference)
        with LocalDaemon(config=config) as daemon, LabClient(daemon.endpoint) as client:
            out["labd_sync"] = _sync(setup, client, daemon.endpoint)
            for name, evaluating, stale in (
                    ("labd_pipelined", True, False), ("labd_pipelined_steps", False, False),
                    ("labd_stale", True, True), ("labd_stale_steps", False, True)):
                out[name] = _pipelined(
                    setup, client, daemon.endpoint, evaluating, stale,
                    -(-arch.batch_size // stale_chunks) if stale else chunk, eval_chunk,
                    {k: v for k, v in variant.items() if k != "wide"} if stale else variant)
    return _headline(out)


def _headline(out: dict[str, Any]) -> dict[str, Any]:
    """The figures with the headline ones (the pipelined approach's) at the top level."""
    best = out["labd_pipelined"]
    out.update(duty_cycle=best["duty_cycle"], nominal_duty_cycle=best["nominal_duty_cycle"],
               shots=best["shots"], wall_s=best["wall_s"],
               final_test_accuracy=best["final_test_accuracy"],
               steps_duty_cycle=out["labd_pipelined_steps"]["duty_cycle"],
               steady_duty_cycle=best.get("steady_duty_cycle"),
               stale_duty_cycle=out["labd_stale"]["duty_cycle"],
               reference_duty_cycle=out["reference"]["duty_cycle"],
               sync_duty_cycle=out["labd_sync"]["duty_cycle"],
               sync_final_test_accuracy=out["labd_sync"]["final_test_accuracy"])
    return out


if __name__ == "__main__":
    from benchmarks import runner

    raise SystemExit(runner.run(__spec__.name, DESCRIPTION, add_arguments, main))
