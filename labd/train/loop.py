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
* ``run(resume=True)`` continues from the checkpoint: the same epochs, the same shuffles (each
  epoch's order is seeded by ``seed`` and the epoch number), counters carried on;
* after the last epoch: the final hardware accuracy on the test set and on (up to
  ``eval_train_max`` of) the training set, the test confusion matrix and example physical
  outputs, returned as a dict.

Physical queries: every row sent to any daemon (training forwards in ``pat`` mode and all
evaluations), counted by ``Hardware``.
"""

from __future__ import annotations

import csv
import time
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
from labd.train.twins import TwinRefiner

METRICS = ["epoch", "train_loss", "train_acc", "test_acc", "test_acc_model",
           "physical_queries", "wall_s"]


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


class Trainer:
    def __init__(self, network: PhysicalNetwork, dataset: Dataset, config: LoopConfig,
                 run_dir: str | Path, hardware: list[Hardware],
                 refiners: list[TwinRefiner] | None = None) -> None:
        if config.mode not in ("pat", "insilico", "twin", "bypass"):
            raise ValueError(f"unknown mode {config.mode!r}")
        self.net = network
        self.data = dataset
        self.cfg = config
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hardware = hardware
        self.refiners = refiners or []
        physical = [p for layer in network.physical_layers() for p in layer.parameters()]
        ids = {id(p) for p in physical}
        digital = [p for p in network.parameters() if id(p) not in ids]
        self.opt = torch.optim.Adam([{"params": physical, "lr": config.lr},
                                     {"params": digital, "lr": config.lr_digital}])
        steps = config.epochs * self._batches()
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, steps))
        self.epoch = 0
        self.query_offset = 0
        self.wall_offset = 0.0
        self.rows: list[dict[str, Any]] = []
        self._q0 = self._hw_queries()
        self._t0 = time.perf_counter()

    # ----------------------------------------------------------------- bookkeeping
    def _batches(self) -> int:
        return (len(self.data.y_train) + self.cfg.batch_size - 1) // self.cfg.batch_size

    def _hw_queries(self) -> int:
        return sum(h.queries for h in self.hardware)

    def queries(self) -> int:
        """Physical queries made by training and evaluation so far (across resumes)."""
        return self.query_offset + self._hw_queries() - self._q0

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self._t0

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "network": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "twins": [r.twin.state_dict() for r in self.refiners],
            "epoch": self.epoch,
            "queries": self.queries(),
            "wall_s": self.wall(),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, weights_only=True)
        self.net.load_state_dict(state["network"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        for refiner, twin_state in zip(self.refiners, state["twins"], strict=True):
            refiner.twin.load_state_dict(twin_state)
        self.epoch = int(state["epoch"])
        self.query_offset = int(state["queries"])
        self.wall_offset = float(state["wall_s"])
        self._q0 = self._hw_queries()
        self._t0 = time.perf_counter()
        self.rows = self._read_metrics()[: self.epoch]

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
    def predict(self, x: np.ndarray, path: str, keep: list[torch.Tensor] | None = None
                ) -> np.ndarray:
        """Predicted classes of ``x`` along ``path`` (``hardware`` or ``model``)."""
        self.net.set_path(path)  # type: ignore[arg-type]
        # eval_batch counts shots per request: each sample is one shot per unit of a layer
        units = max((layer.units for layer in self.net.physical_layers()), default=1)
        step = max(1, self.cfg.eval_batch // units)
        out = []
        for i in range(0, len(x), step):
            scores = self.net(torch.from_numpy(x[i:i + step]), keep)
            out.append(scores.argmax(1).numpy())
        return np.concatenate(out)

    def _train_path(self) -> str:
        return "pat" if self.cfg.mode == "pat" else "model"

    # ----------------------------------------------------------------- training
    def run(self, resume: bool = False) -> dict[str, Any]:
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
        x = torch.from_numpy(self.data.x_train)
        y = torch.from_numpy(self.data.y_train)
        loss_fn = nn.CrossEntropyLoss()
        epochs = range(self.epoch, self.cfg.epochs)
        bar = tqdm(epochs, desc=f"train {self.cfg.mode}", unit="epoch",
                   disable=not self.cfg.progress, initial=self.epoch, total=self.cfg.epochs)
        for epoch in bar:
            self.net.set_path(self._train_path())  # type: ignore[arg-type]
            self.net.train()
            gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
            perm = torch.randperm(len(y), generator=gen)
            total_loss, correct = 0.0, 0
            for i in range(0, len(y), self.cfg.batch_size):
                idx = perm[i:i + self.cfg.batch_size]
                scores = self.net(x[idx])
                loss = loss_fn(scores, y[idx])
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                self.sched.step()
                for refiner in self.refiners:
                    refiner.step()
                total_loss += loss.item() * len(idx)
                correct += int((scores.argmax(1) == y[idx]).sum())
            self.net.eval()
            test_acc = float(np.mean(self.predict(self.data.x_test, "hardware")
                                     == self.data.y_test))
            model_acc = None
            if self.cfg.mode in ("insilico", "twin"):
                model_acc = float(np.mean(self.predict(self.data.x_test, "model")
                                          == self.data.y_test))
            self.epoch = epoch + 1
            self.rows.append({"epoch": self.epoch, "train_loss": total_loss / len(y),
                              "train_acc": correct / len(y), "test_acc": test_acc,
                              "test_acc_model": model_acc, "physical_queries": self.queries(),
                              "wall_s": round(self.wall(), 3)})
            self._write_metrics()
            self.save_checkpoint()
            bar.set_postfix(loss=f"{total_loss / len(y):.3f}", test=f"{test_acc:.3f}")
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Final hardware evaluation: accuracies, confusion matrix, example outputs."""
        self.net.eval()
        n = min(len(self.data.y_train), self.cfg.eval_train_max)
        pick = np.random.default_rng(self.cfg.seed).permutation(len(self.data.y_train))[:n]
        train_acc = float(np.mean(self.predict(self.data.x_train[pick], "hardware")
                                  == self.data.y_train[pick]))
        keep: list[torch.Tensor] = []
        pred = self.predict(self.data.x_test, "hardware", keep)
        test_acc = float(np.mean(pred == self.data.y_test))
        k = self.data.n_classes
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (self.data.y_test, pred), 1)
        examples = [t[:8].numpy() for t in keep[: len(self.net.physical_layers())]]
        model_acc = None
        if self.cfg.mode in ("insilico", "twin"):
            model_acc = float(np.mean(self.predict(self.data.x_test, "model")
                                      == self.data.y_test))
        return {"test_accuracy": test_acc, "train_accuracy": train_acc,
                "train_accuracy_samples": int(n), "test_accuracy_model": model_acc,
                "confusion": confusion, "examples": examples,
                "example_labels": self.data.y_test[:8], "epochs": self.epoch,
                "training_queries": self.queries(), "training_wall_s": self.wall()}

