"""What a training run reports while it trains, beside its ``metrics.csv``: a log line per
epoch, and TensorBoard event files in the run folder when TensorBoard is installed
(``labd.train.tensorboard``).

Contract:

* ``Report(run_dir, resume)`` is an ``on_epoch`` callback of ``labd.train.loop.Trainer``:
  for each epoch's metrics row it logs one line (logger ``labd.train``, info) and writes the
  row's scalars and the duty cycle to TensorBoard; ``figure(name, fig)`` writes a figure
  there; ``close()`` closes the event file.
* The duty cycle of an epoch is the instrument time over the wall time between its row and
  the previous one (the rows' ``instrument_s`` and ``wall_s``; the first row a ``Report``
  sees: since training began, across resumes); instruments on several daemons add up (two
  instruments busy all the time: 2).
* ``@reporting`` on a run function (``labd.train.run.run_training``, which ``labd train``,
  ``labd reproduce`` and every trial of ``labd tune`` call) gives each call a ``Report`` on
  its ``out`` folder: chained before the caller's own ``on_epoch`` callback, receiving every
  figure the run saves (``labd.train.plots.figures_to``: the twins' predicted-vs-measured,
  the learning curves, the confusion matrix, the example physical outputs), closed when the
  call ends, however it ends.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from labd.train import plots
from labd.train.tensorboard import open_board

log = logging.getLogger("labd.train")

Run = TypeVar("Run", bound=Callable[..., Any])


def epoch_line(name: str, row: dict[str, Any], duty_cycle: float | None) -> str:
    """The log line of one epoch's metrics row."""
    accuracies = [f"train {row['train_acc']:.3f}"]
    if row.get("val_acc") is not None:
        accuracies.append(f"validation {row['val_acc']:.3f}")
    test = f"test {row['test_acc']:.3f} on the hardware"
    if row.get("test_acc_model") is not None:
        test += f" ({row['test_acc_model']:.3f} on the model)"
    line = (f"{name}: epoch {row['epoch']}: loss {row['train_loss']:.4f}, accuracy "
            f"{', '.join([*accuracies, test])}; {row['physical_queries']} physical queries")
    if duty_cycle is not None:
        line += f", instrument busy {duty_cycle:.1%} of the time"
    return line


class Report:
    """A run's per-epoch report (module doc)."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.name = run_dir.name
        self.board = open_board(run_dir, resume)
        #: ``(instrument_s, wall_s)`` of the previous row seen
        self._last = (0.0, 0.0)

    def duty_cycle(self, row: dict[str, Any]) -> float | None:
        """Instrument time over wall time since the previous row (module doc)."""
        if row.get("instrument_s") is None:
            return None
        instrument, wall = float(row["instrument_s"]), float(row["wall_s"])
        spent, elapsed = instrument - self._last[0], wall - self._last[1]
        self._last = (instrument, wall)
        return spent / elapsed if elapsed > 0 else None

    def __call__(self, row: dict[str, Any]) -> None:
        duty = self.duty_cycle(row)
        if self.board is not None:
            self.board.epoch(row, duty)
        log.info("%s", epoch_line(self.name, row, duty))

    def figure(self, name: str, fig: Any) -> None:
        if self.board is not None:
            self.board.figure(name, fig)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()


def reporting(run: Run) -> Run:
    """``run`` (keyword arguments ``out``, ``resume``, ``on_epoch``) with a ``Report``."""

    @functools.wraps(run)
    def reported(**kwargs: Any) -> Any:
        report = Report(Path(kwargs["out"]), bool(kwargs.get("resume")))
        outer = kwargs.get("on_epoch")

        def on_epoch(row: dict[str, Any]) -> None:
            report(row)
            if outer is not None:
                outer(row)

        try:
            with plots.figures_to(report.figure):
                return run(**{**kwargs, "on_epoch": on_epoch})
        finally:
            report.close()

    return reported  # type: ignore[return-value]
