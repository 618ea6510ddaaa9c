"""The digital yardstick of every run: a logistic regression on the same split.

``logistic_regression(dataset)`` fits a multinomial logistic regression to the rows the
network trains on (``x_train``; not the validation rows), on features standardised with
those rows' mean and standard deviation, with an L2 penalty of scikit-learn's default
strength (``C = 1``: the mean cross-entropy plus ``||W||^2 / (2 C N)``, the intercepts
unpenalised), by full-batch L-BFGS in float32 on the CPU with scikit-learn's stopping rule
(gradient below ``tol = 1e-4``, at most ``max_iter = 100`` iterations). It returns its
accuracies on the training, validation and test rows. No physical query, no daemon. A fit is
kept for the life of the process, keyed by the split's bytes: the runs of one ``labd
reproduce`` or ``labd tune`` process on the same split fit it once.

The other half of the yardstick, the same design with every physical layer replaced by a
fixed window mean (``--mode bypass``, ``labd.train.arch.Bypass``), is trained by
``labd.train.run`` beside the run (``bypass/`` in the run folder).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch

from labd.train.datasets import Dataset

_FITTED: dict[str, dict[str, Any]] = {}


def _standardise(x_fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x_fit, np.float64)
    std = x.std(0)
    return x.mean(0), np.where(std > 0, std, 1.0)


def _key(dataset: Dataset, c: float, max_iter: int, tol: float) -> str:
    digest = hashlib.sha1(f"{c} {max_iter} {tol}".encode())
    for a in (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val,
              dataset.x_test, dataset.y_test):
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def logistic_regression(dataset: Dataset, c: float = 1.0, max_iter: int = 100,
                        tol: float = 1e-4) -> dict[str, Any]:
    """Fit on ``dataset.x_train``; test, train and validation accuracies (module doc)."""
    key = _key(dataset, c, max_iter, tol)
    if key not in _FITTED:
        _FITTED[key] = _fit(dataset, c, max_iter, tol)
    return dict(_FITTED[key])


def _fit(dataset: Dataset, c: float, max_iter: int, tol: float) -> dict[str, Any]:
    started = time.perf_counter()
    mean, std = _standardise(dataset.x_train)

    def features(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((np.asarray(x, np.float64) - mean) / std).astype(np.float32))

    x = features(dataset.x_train)
    y = torch.from_numpy(dataset.y_train)
    n, k = len(y), dataset.n_classes
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=1e-9, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (torch.nn.functional.cross_entropy(x @ w + b, y)
                + (w * w).sum() / (2 * c * n))
        loss.backward()
        return loss

    with torch.random.fork_rng():
        opt.step(closure)

    @torch.no_grad()
    def accuracy(xs: np.ndarray, ys: np.ndarray) -> float | None:
        if len(ys) == 0:
            return None
        return float(((features(xs) @ w + b).argmax(1).numpy() == ys).mean())

    return {"test_accuracy": accuracy(dataset.x_test, dataset.y_test),
            "train_accuracy": accuracy(dataset.x_train, dataset.y_train),
            "val_accuracy": accuracy(dataset.x_val, dataset.y_val),
            "C": c, "iterations": int(opt.state[w].get("n_iter", 0)),
            "fit_s": round(time.perf_counter() - started, 3),
            "what": "multinomial logistic regression, standardised features, L2 (C=1), "
                    "fitted on the training rows (validation rows excluded)"}


def table(summary: dict[str, Any]) -> str:
    """The run beside its yardstick: test, validation and training accuracy, one row each."""
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    yard = summary.get("yardstick", {})
    rows = [(f"{summary['mode']} on {summary['system']}", summary["test_accuracy"],
             summary.get("val_accuracy"), summary["train_accuracy"])]
    if "bypass" in yard:
        b = yard["bypass"]
        rows.append(("bypass (no physics)", b["test_accuracy"], b.get("val_accuracy"),
                     b["train_accuracy"]))
    if "logistic_regression" in yard:
        lr = yard["logistic_regression"]
        rows.append(("logistic regression", lr["test_accuracy"], lr.get("val_accuracy"),
                     lr["train_accuracy"]))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{summary['task']}: {summary['n_train']} training, {summary.get('n_val', 0)} "
             f"validation, {summary['n_test']} test rows",
             f"{'':<{width}}{'test':>8}{'val':>8}{'train':>8}"]
    lines += [f"{name:<{width}}{pct(t):>8}{pct(v):>8}{pct(tr):>8}" for name, t, v, tr in rows]
    return "\n".join(lines)
