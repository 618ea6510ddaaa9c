"""Figures of a run and of a twin (matplotlib, Agg backend: files only, no display).

* ``learning_curves(rows, path)``: train accuracy (training path), validation accuracy (when
  there are validation rows; the epoch kept is marked) and test accuracy (measured on the
  hardware; and on the digital model in the digital modes) per epoch.
* ``confusion(matrix, path)``: the test confusion matrix on the hardware.
* ``physical_outputs(examples, labels, path)``: each physical layer's measured outputs for a
  few test samples.
* ``twin_scatter(pred, measured, path)``: a twin's predictions against measurements.

Inside ``with figures_to(sink):`` every figure is also given to ``sink(name, figure)`` before
it is closed (``name``: the file's stem), e.g. to a run's TensorBoard event files
(``labd.train.report``); the sinks belong to the context (thread) that set them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

FigureSink = Callable[[str, Figure], None]
_sinks: ContextVar[tuple[FigureSink, ...]] = ContextVar("figure_sinks", default=())


@contextlib.contextmanager
def figures_to(sink: FigureSink) -> Iterator[None]:
    """Within the block, every figure saved here is also given to ``sink``."""
    token = _sinks.set((*_sinks.get(), sink))
    try:
        yield
    finally:
        _sinks.reset(token)


def _save(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` to ``path``, give it to the sinks, close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    for sink in _sinks.get():
        sink(Path(path).stem, fig)
    plt.close(fig)


def learning_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "",
                    best_epoch: int | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_acc"] for r in rows], label="train (training path)")
    if any(r.get("val_acc") is not None for r in rows):
        ax.plot(epochs, [r.get("val_acc") for r in rows], label="validation")
    ax.plot(epochs, [r["test_acc"] for r in rows], label="test (hardware)")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", lw=0.8, ls=":", label=f"kept: epoch {best_epoch}")
    if any(r.get("test_acc_model") is not None for r in rows):
        ax.plot(epochs, [r.get("test_acc_model") for r in rows], "--",
                label="test (digital model)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    _save(fig, path)


def confusion(matrix: np.ndarray, path: str | Path, title: str = "") -> None:
    k = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1 + 0.45 * k))
    ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_title(title)
    _save(fig, path)


def physical_outputs(examples: list[np.ndarray], labels: np.ndarray, path: str | Path) -> None:
    n = len(examples)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), squeeze=False)
    for i, (ax, ys) in enumerate(zip(axes[0], examples, strict=True)):
        for y, label in zip(ys, labels, strict=False):
            ax.plot(y, lw=1, label=str(int(label)))
        ax.set_title(f"physical layer {i + 1}")
        ax.set_xlabel("output element")
    axes[0][0].set_ylabel("measured y")
    axes[0][-1].legend(title="class", fontsize=6, ncol=2)
    _save(fig, path)


def twin_scatter(pred: np.ndarray, measured: np.ndarray, path: str | Path,
                 title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    p, m = pred.ravel(), measured.ravel()
    if len(p) > 20000:
        idx = np.random.default_rng(0).choice(len(p), 20000, replace=False)
        p, m = p[idx], m[idx]
    ax.scatter(m, p, s=2, alpha=0.3)
    lo, hi = float(min(m.min(), p.min())), float(max(m.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("measured y")
    ax.set_ylabel("twin prediction")
    ax.set_title(title)
    _save(fig, path)
