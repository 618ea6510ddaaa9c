"""The training loop: epochs of mini-batches, evaluation on the hardware, checkpoints, metrics.

Contract of ``Trainer(network, dataset, config, run_dir, hardware)``:

* training path: ``pat`` mode trains with the hardware forward and the model backward;
  ``insilico`` and ``twin`` modes train on the digital model alone (``model`` path);
  ``bypass`` (the digital-only baseline, no physical layer at all) trains and evaluates the
  digital network and makes no physical query;
* every epoch: test accuracy *on the hardware* (whatever the mode), the digital model's test
  accuracy for the digital modes, a row appended to ``run_dir/metrics.csv`` and a checkpoint
  ``run_dir/checkpoint.pt`` (state dicts of the network, optimiser, scheduler and any refined
  twins, plus counters; tensors and plain values only, loaded with ``weights_only=True``);
* with validation rows (``Dataset.x_val``): every epoch also the validation accuracy and mean
  loss along the path the mode trusts (``pat``, ``bypass``: the hardware's forward, measured
  with the test rows; ``insilico``, ``twin``: the digital model, since those modes must not
  learn from the hardware); the network of the best validation accuracy (ties: the lower
  validation loss) is kept in ``run_dir/best.pt`` and is the one evaluated at the end;
  ``patience`` > 0 stops training once that many epochs pass without a better one;
* after each epoch's row is written, every ``on_epoch`` callback gets a copy of it (what a
  progress display, a logger or ``labd tune``'s pruning needs; an exception raised there
  ends training with the checkpoint written);
* ``run(resume=True)`` continues from the checkpoint: the same epochs, the same shuffles (each
  epoch's order is seeded by ``seed`` and the epoch number), counters carried on; a checkpoint
  written before its epoch's test evaluation was measured (pipelined, see below) gets that
  evaluation first;
* after the last epoch: the final hardware accuracy on the test set and on (up to
  ``eval_train_max`` of) the training set, the test confusion matrix and example physical
  outputs, returned as a dict.

Devices: the network, its digital models and the data live on ``config.device``; the only
transfers are at the hardware boundary (``PhysicalLayer.measure`` and the pipeline's
requests: rows to the host, measurements back) and the small results of evaluations.

Physical queries: every row sent to any daemon (training forwards in ``pat`` mode and all
evaluations), counted by ``Hardware``; ``instrument_s``: the instrument seconds the daemons
reported for them (over ``wall_s``: the duty cycle of the training). Both carry on across
resumes, as ``wall_s`` does.

Pipelined PAT (``LoopConfig.pipeline``, the default): in ``pat`` mode, when every physical
layer's client can ``submit`` and collect ``result``s (``LabClient``), the training steps and the
per-epoch test evaluation run through ``labd.train.pipeline.Pipeline``: each minibatch is cut
into ``chunks`` requests per layer that flow through the layers as a wavefront, and the test
evaluation of epoch ``k`` (of a frozen copy of the network as it was after epoch ``k``) is
measured in the gaps the steps of epoch ``k + 1`` leave, the rest back to back at its end, the
last epoch's at once. The same algorithm as the plain loop (the same gradients, losses, scores,
optimiser steps, evaluations, shots and metrics); only the instrument idles less. With twin
refinement the evaluation stays synchronous (the refiner also records the evaluation's shots).
Epoch ``k``'s metrics row and checkpoint are written once its evaluation is measured (the
checkpoint holds the state as it was at the end of epoch ``k``, copied then); until then a
checkpoint of that state holds the row as ``unevaluated``, so that a run failing during epoch
``k + 1`` resumes after epoch ``k``. ``pipeline=False`` is the plain synchronous loop (one
request per layer and minibatch, the evaluation after each epoch).
"""

from __future__ import annotations

import copy
import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from labd.train.datasets import Dataset
from labd.train.hardware import Hardware
from labd.train.layers import PhysicalNetwork
from labd.train.pipeline import Evaluation, Pipeline, samples_per_request
from labd.train.twins import TwinRefiner

METRICS = ["epoch", "train_loss", "train_acc", "val_acc", "val_loss", "test_acc",
           "test_acc_model", "physical_queries", "instrument_s", "wall_s"]
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class LoopConfig:
    mode: str
    epochs: int
    batch_size: int
    lr: float
    lr_digital: float
    seed: int = 0
    eval_train_max: int = 10000
    #: shots per evaluation request (samples x units of the widest physical layer)
    eval_batch: int = 8192
    progress: bool = True
    #: ``pat`` training and its per-epoch test evaluation through ``Pipeline`` (module doc);
    #: False: the plain synchronous loop
    pipeline: bool = True
    #: requests each minibatch is cut into per physical layer when pipelined
    chunks: int = 2
    #: early stopping: epochs without a better validation score (0: never)
    patience: int = 0
    #: where the network, its digital models and the data live
    device: str = "cpu"


@dataclass
class _Pending:
    """An epoch's metrics row waiting for its test evaluation (``None``: already measured)
    and the checkpoint state copied at the end of the epoch (``None``: take it when written)."""

    row: dict[str, Any]
    evaluation: Evaluation | None
    state: dict[str, Any] | None


class Trainer:
    def __init__(self, network: PhysicalNetwork, dataset: Dataset, config: LoopConfig,
                 run_dir: str | Path, hardware: list[Hardware],
                 refiners: list[TwinRefiner] | None = None,
                 on_epoch: list[EpochCallback] | None = None) -> None:
        if config.mode not in ("pat", "insilico", "twin", "bypass"):
            raise ValueError(f"unknown mode {config.mode!r}")
        self.net = network
        self.data = dataset
        self.cfg = config
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hardware = hardware
        self.refiners = refiners or []
        self.on_epoch = list(on_epoch or [])
        self.device = torch.device(config.device)
        #: the data on the device, once: ``train``, ``val``, ``test`` -> (x, labels)
        self.tensors = {name: (torch.from_numpy(x).to(self.device),
                               torch.from_numpy(y).to(self.device))
                        for name, x, y in (("train", dataset.x_train, dataset.y_train),
                                           ("val", dataset.x_val, dataset.y_val),
                                           ("test", dataset.x_test, dataset.y_test))}
        #: the best validation epoch so far: ``{"epoch", "val_acc", "val_loss"}``
        self.best: dict[str, Any] | None = None
        physical = [p for layer in network.physical_layers() for p in layer.parameters()]
        ids = {id(p) for p in physical}
        digital = [p for p in network.parameters() if id(p) not in ids]
        self.opt = torch.optim.Adam([{"params": physical, "lr": config.lr},
                                     {"params": digital, "lr": config.lr_digital}])
        steps = config.epochs * self._batches()
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, steps))
        self.epoch = 0
        self.query_offset = 0
        self.instrument_offset = 0.0
        self.wall_offset = 0.0
        self.rows: list[dict[str, Any]] = []
        #: the metrics row of the checkpoint's epoch when its test evaluation is still to come
        self.unevaluated: dict[str, Any] | None = None
        self._q0, self._i0 = self._hw_queries(), self._hw_instrument()
        self._t0 = time.perf_counter()

    # ----------------------------------------------------------------- bookkeeping
    def _batches(self) -> int:
        return (len(self.data.y_train) + self.cfg.batch_size - 1) // self.cfg.batch_size

    def _hw_queries(self) -> int:
        return sum(h.queries for h in self.hardware)

    def queries(self) -> int:
        """Physical queries made by training and evaluation so far (across resumes)."""
        return self.query_offset + self._hw_queries() - self._q0

    def _hw_instrument(self) -> float:
        return sum(h.instrument_s for h in self.hardware)

    def instrument(self) -> float:
        """Instrument seconds of those queries (across resumes)."""
        return self.instrument_offset + self._hw_instrument() - self._i0

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    @property
    def validating(self) -> bool:
        return len(self.data.y_val) > 0

    def save_checkpoint(self, state: dict[str, Any] | None = None) -> None:
        """Write the checkpoint: ``state`` (a copy taken earlier, see ``run``) or now's."""
        state = self._state() if state is None else state
        _save(state, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, weights_only=True, map_location=self.device)
        self.net.load_state_dict(state["network"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        for refiner, twin_state in zip(self.refiners, state["twins"], strict=True):
            refiner.twin.load_state_dict(twin_state)
        self.epoch = int(state["epoch"])
        self.best = state.get("best")
        self.query_offset = int(state["queries"])
        self.instrument_offset = float(state.get("instrument_s", 0.0))
        self.wall_offset = float(state["wall_s"])
        self._q0, self._i0 = self._hw_queries(), self._hw_instrument()
        self._t0 = time.perf_counter()
        self.unevaluated = state.get("unevaluated")
        self.rows = self._read_metrics()[: self.epoch - (self.unevaluated is not None)]

    def _read_metrics(self) -> list[dict[str, Any]]:
        path = self.dir / "metrics.csv"
        if not path.exists():
            return []
        def value(key: str, text: str) -> float | int | None:
            if text == "":
                return None
            return int(text) if key in ("epoch", "physical_queries") else float(text)

        with path.open(newline="") as fh:
            return [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(fh)]

    def _write_metrics(self) -> None:
        with (self.dir / "metrics.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, METRICS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRICS})

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def scores(self, x: torch.Tensor, path: str, keep: list[torch.Tensor] | None = None
               ) -> torch.Tensor:
        """Class scores of ``x`` (on the device) along ``path`` (``hardware`` or ``model``)."""
        self.net.set_path(path)  # type: ignore[arg-type]
        # eval_batch counts shots per request: each sample is one shot per unit of a layer
        layers = self.net.physical_layers()
        units = max((layer.units for layer in layers), default=1)
        step = max(1, self.cfg.eval_batch // units)
        if path == "hardware":  # within the daemons' message limits
            step = min(step, samples_per_request(layers) or step)
        if len(x) == 0:
            return torch.zeros(0, self.data.n_classes, device=self.device)
        return torch.cat([self.net(x[i:i + step], keep) for i in range(0, len(x), step)])

    def predict(self, x: torch.Tensor, path: str, keep: list[torch.Tensor] | None = None
                ) -> np.ndarray:
        """Predicted classes of ``x`` along ``path`` (host numpy)."""
        return self.scores(x, path, keep).argmax(1).cpu().numpy()

    def accuracy(self, split: str, path: str) -> float:
        """Accuracy on ``split`` (``train``, ``val``, ``test``) along ``path``."""
        x, labels = self.tensors[split]
        return float((self.scores(x, path).argmax(1) == labels).double().mean())

    def _val_path(self) -> str:
        """The path validation trusts: the hardware, or the digital model in the modes that
        must not learn from the hardware."""
        return "model" if self.cfg.mode in ("insilico", "twin") else "hardware"

    def _train_path(self) -> str:
        return "pat" if self.cfg.mode == "pat" else "model"

    def pipelined(self) -> bool:
        """Whether ``run`` trains and evaluates through ``Pipeline`` (module docstring)."""
        layers = self.net.physical_layers()
        return (self.cfg.pipeline and self.cfg.mode == "pat" and bool(layers)
                and all(layer.hardware is not None and hasattr(layer.hardware.client, "submit")
                        and hasattr(layer.hardware.client, "result") for layer in layers))

    def _pipeline(self) -> Pipeline:
        """The pipeline: ``chunks`` requests per minibatch and layer; evaluation fillers of
        the test set's shots spread over an epoch's steps (at most ``eval_batch`` shots)."""
        layers = self.net.physical_layers()
        chunk = -(-self.cfg.batch_size // max(1, self.cfg.chunks))
        most = max(1, self.cfg.eval_batch // max(layer.units for layer in layers))
        eval_chunk = min(most, -(-len(self.data.y_test) * len(layers) // self._batches()))
        return Pipeline(self.net, nn.CrossEntropyLoss(reduction="sum"), chunk, eval_chunk)

    def _eval_rows(self) -> torch.Tensor:
        """The rows of one per-epoch hardware evaluation: validation rows (when validation is
        on the hardware) then test rows."""
        x_test = self.tensors["test"][0]
        if self.validating and self._val_path() == "hardware":
            return torch.cat([self.tensors["val"][0], x_test])
        return x_test

    def _eval_shots(self) -> int:
        """Shots of one per-epoch evaluation on the hardware."""
        return len(self._eval_rows()) * sum(layer.units for layer in self.net.physical_layers())

    def _state(self) -> dict[str, Any]:
        return {
            "network": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "twins": [r.twin.state_dict() for r in self.refiners],
            "epoch": self.epoch,
            "best": self.best,
            "queries": self.queries(),
            "instrument_s": self.instrument(),
            "wall_s": self.wall(),
        }

    # ----------------------------------------------------------------- training
    def run(self, resume: bool = False) -> dict[str, Any]:
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            if self.unevaluated is not None:  # the evaluation the failure interrupted
                # its shots are in the checkpoint's count already (sent, never answered)
                self.query_offset -= self._eval_shots()
                self._evaluate_now(dict(self.unevaluated))
                self.unevaluated = None
        pipe = self._pipeline() if self.pipelined() else None
        #: an epoch whose evaluation is being measured (pipelined): its row and checkpoint
        pending: _Pending | None = None
        epochs = range(self.epoch, self.cfg.epochs)
        bar = tqdm(epochs, desc=f"train {self.cfg.mode}", unit="epoch",
                   disable=not self.cfg.progress, initial=self.epoch, total=self.cfg.epochs)
        for epoch in bar:
            if self._stopping(pipe, pending):
                pending = None
                break
            row, pending = self._train_epoch(epoch, pipe, pending)
            pending = self._evaluate_epoch(row, pipe, pending)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}",
                            test=f"{self.rows[-1]['test_acc']:.3f}" if self.rows else "-")
        return self.finish()

    def _step(self, x: torch.Tensor, labels: torch.Tensor, pipe: Pipeline | None
              ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """One minibatch: forward and backward (through ``pipe`` if given), the optimiser's
        and the schedule's steps, twin refinement; its scores and mean loss (the plain loop:
        a tensor on the device, read once an epoch)."""
        self.opt.zero_grad()
        if pipe is not None:
            step = pipe.step(x, labels)
            scores, loss_value = step.scores, step.loss
        else:
            scores = self.net(x)
            loss = nn.functional.cross_entropy(scores, labels)
            loss.backward()
            loss_value = loss.detach()
        self.opt.step()
        self.sched.step()
        for refiner in self.refiners:
            refiner.step()
        return scores, loss_value

    def _evaluate_epoch(self, row: dict[str, Any], pipe: Pipeline | None,
                        pending: _Pending | None) -> _Pending | None:
        """The evaluations (validation and test) of the epoch just trained (``row``): queued
        in ``pipe`` (the
        previous one, ``pending``, finished first), or measured now without it (or with twin
        refinement). Returns the epoch whose evaluation is still being measured."""
        if pipe is None or self.refiners:
            self._evaluate_now(row)
            return None
        if pending is not None:  # not measured yet in the gaps: at once now
            pipe.drain()
            self._close(pending)
        # every evaluation's shots so far are sent: the count the plain loop has after this one
        row["physical_queries"] = self.queries() + self._eval_shots()
        pending = _Pending(row, pipe.evaluate(self._eval_rows()), copy.deepcopy(self._state()))
        pending.state["queries"] = row["physical_queries"]
        self.save_checkpoint({**pending.state, "unevaluated": row})
        if self.epoch < self.cfg.epochs:
            return pending
        pipe.drain()
        self._close(pending)
        return None

    def _evaluate_now(self, row: dict[str, Any]) -> None:
        """Epoch ``row``'s evaluations, measured now, and its closing."""
        self.net.eval()
        self._close(_Pending(row, None, None))

    def _train_epoch(self, epoch: int, pipe: Pipeline | None, pending: _Pending | None
                     ) -> tuple[dict[str, Any], _Pending | None]:
        """One epoch of minibatches; returns its metrics row (training figures) and the
        pending evaluation, closed here once measured in the gaps."""
        x, y = self.tensors["train"]
        self.net.set_path(self._train_path())  # type: ignore[arg-type]
        self.net.train()
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        perm = torch.randperm(len(y), generator=gen).to(self.device)
        total_loss, correct = 0.0, torch.zeros((), dtype=torch.long, device=self.device)
        for i in range(0, len(y), self.cfg.batch_size):
            idx = perm[i:i + self.cfg.batch_size]
            scores, loss_value = self._step(x[idx], y[idx], pipe)
            total_loss += loss_value * len(idx)
            correct += (scores.argmax(1) == y[idx]).sum()
            if pending is not None and pending.evaluation is not None \
                    and pending.evaluation.done:
                self._close(pending)
                pending = None
        self.epoch = epoch + 1
        return {"epoch": self.epoch, "train_loss": float(total_loss) / len(y),
                "train_acc": int(correct) / len(y)}, pending

    def _stopping(self, pipe: Pipeline | None, pending: _Pending | None) -> bool:
        """Early stopping, decided before epoch ``self.epoch + 1``: ``patience`` epochs have
        passed since the best validation score. A pending evaluation that could decide it is
        measured first, so that pipelined, plain and resumed runs stop at the same epoch."""
        if not (self.cfg.patience and self.validating and self.best is not None):
            return False
        if self.epoch - int(self.best["epoch"]) < self.cfg.patience:
            return False
        if pending is not None and pipe is not None:
            pipe.drain()
            self._close(pending)
        return self.epoch - int(self.best["epoch"]) >= self.cfg.patience

    def _close(self, pending: _Pending) -> None:
        """An epoch whose evaluation is measured (or is measured now): validation and test
        accuracy, the digital model's (digital modes), its metrics row, its checkpoint, the
        best network so far, the callbacks."""
        row = pending.row
        labels = self.tensors["test"][1]
        if pending.evaluation is not None:
            scores = pending.evaluation.scores
            n_val = len(scores) - len(labels)
            val_scores, test_scores = scores[:n_val], scores[n_val:]
        else:
            test_scores = self.scores(self.tensors["test"][0], "hardware")
            val_scores = self.scores(self.tensors["val"][0], self._val_path())
            row["physical_queries"] = self.queries()
        row["test_acc"] = float((test_scores.argmax(1) == labels).double().mean())
        if self.validating:
            if len(val_scores) == 0:  # pipelined, validated on the model
                val_scores = self.scores(self.tensors["val"][0], self._val_path())
            val_labels = self.tensors["val"][1]
            row["val_acc"] = float((val_scores.argmax(1) == val_labels).double().mean())
            row["val_loss"] = float(nn.functional.cross_entropy(val_scores, val_labels))
        model_acc = None
        if self.cfg.mode in ("insilico", "twin"):
            model_acc = self.accuracy("test", "model")
        self.rows.append({**row, "test_acc_model": model_acc,
                          "instrument_s": round(self.instrument(), 4),
                          "wall_s": round(self.wall(), 3)})
        self._write_metrics()
        state = pending.state if pending.state is not None else self._state()
        if self.validating and self._improves(row):
            self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"],
                         "val_loss": row["val_loss"]}
            _save({"network": state["network"], **self.best}, self.best_path)
        state["best"] = self.best
        state["wall_s"] = self.wall()
        state["instrument_s"] = self.instrument()
        self.save_checkpoint(state)
        for callback in self.on_epoch:
            callback(dict(self.rows[-1]))

    def _improves(self, row: dict[str, Any]) -> bool:
        """A better validation score: higher accuracy, or the same with a lower loss."""
        if self.best is None:
            return True
        return (row["val_acc"], -row["val_loss"]) > (self.best["val_acc"],
                                                     -self.best["val_loss"])

    def finish(self) -> dict[str, Any]:
        """Final hardware evaluation (of the best validation network when there is one):
        accuracies, confusion matrix, example outputs."""
        if self.validating and self.best is not None and self.best_path.exists():
            best = torch.load(self.best_path, weights_only=True, map_location=self.device)
            self.net.load_state_dict(best["network"])
        self.net.eval()
        n = min(len(self.data.y_train), self.cfg.eval_train_max)
        pick = np.random.default_rng(self.cfg.seed).permutation(len(self.data.y_train))[:n]
        x_train = self.tensors["train"][0]
        pick_t = torch.from_numpy(pick).to(self.device)
        train_acc = float(np.mean(self.predict(x_train[pick_t], "hardware")
                                  == self.data.y_train[pick]))
        keep: list[torch.Tensor] = []
        pred = self.predict(self.tensors["test"][0], "hardware", keep)
        test_acc = float(np.mean(pred == self.data.y_test))
        k = self.data.n_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (self.data.y_test, pred), 1)
        examples = [t[:8].cpu().numpy() for t in keep[: len(self.net.physical_layers())]]
        model_acc = None
        if self.cfg.mode in ("insilico", "twin"):
            model_acc = self.accuracy("test", "model")
        return {"test_accuracy": test_acc, "train_accuracy": train_acc,
                "train_accuracy_samples": int(n), "test_accuracy_model": model_acc,
                "confusion": confusion, "examples": examples,
                "example_labels": self.data.y_test[:8], "epochs": self.epoch,
                "best": self.best, "stopped_early": self.epoch < self.cfg.epochs,
                "training_queries": self.queries(), "training_wall_s": self.wall()}


def _save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file: a crash never leaves a half-written file."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
