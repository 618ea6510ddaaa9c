"""TensorBoard event files of a training run, written into its run folder when the
``tensorboard`` package is installed (``pip install 'labd[tensorboard]'``);
``tensorboard --logdir RUNS`` then shows every run folder under ``RUNS`` as a run.

Contract:

* ``open_board(run_dir, resume)``: a ``Board`` on ``run_dir``, or ``None`` when TensorBoard is
  not installed (said once per process, at info level; nothing else changes);
* ``Board.epoch(row, duty_cycle)``: an epoch's metrics row (``labd.train.loop.METRICS``) as
  scalars at step ``row["epoch"]``, tagged by ``TAGS`` (a numeric key it does not name goes
  under ``metrics/``; ``None`` values are left out), and the duty cycle (instrument time over
  wall time, 0 to 1) as ``hardware/duty_cycle`` when given;
* ``Board.figure(name, fig)``: a matplotlib figure as the image ``figures/NAME`` at the step
  of the last epoch written (0 before the first), the figure left open;
* the event files are written by ``torch.utils.tensorboard.SummaryWriter``, opened at the
  first write (nothing written, no file), flushed after every epoch and figure (a run is
  watched live and a crash loses nothing), closed by ``close()``. A resumed run purges the
  steps from its first write on (an epoch that a crash interrupted and that is trained again
  is shown once: TensorBoard's ``purge_step``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("labd.train")

#: metrics row key -> TensorBoard tag
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/validation",
    "test_acc": "accuracy/test_hardware",
    "test_acc_model": "accuracy/test_model",
    "physical_queries": "hardware/physical_queries",
    "instrument_s": "hardware/instrument_s",
    "wall_s": "time/wall_s",
}
EXTRA = "pip install 'labd[tensorboard]'"
_told_missing = False


def open_board(run_dir: Path, resume: bool = False) -> Board | None:
    """A ``Board`` writing into ``run_dir``; ``None`` without TensorBoard (module doc)."""
    global _told_missing
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _told_missing:
            log.info("TensorBoard is not installed, so runs write no event files (%s to "
                     "get them)", EXTRA)
            _told_missing = True
        return None
    return Board(SummaryWriter, run_dir, resume)


class Board:
    """A run folder's TensorBoard event files (module doc)."""

    def __init__(self, summary_writer: type, run_dir: Path, resume: bool) -> None:
        self._summary_writer = summary_writer
        self.run_dir = run_dir
        self.resume = resume
        self.step = 0
        self._writer: Any = None

    def _open(self, step: int) -> Any:
        if self._writer is None:
            self._writer = self._summary_writer(str(self.run_dir),
                                                purge_step=step if self.resume else None)
            log.info("TensorBoard event files in %s (tensorboard --logdir %s)", self.run_dir,
                     self.run_dir.parent)
        return self._writer

    def epoch(self, row: dict[str, Any], duty_cycle: float | None = None) -> None:
        self.step = int(row["epoch"])
        writer = self._open(self.step)
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                writer.add_scalar(TAGS.get(key, f"metrics/{key}"), value, self.step)
        if duty_cycle is not None:
            writer.add_scalar("hardware/duty_cycle", duty_cycle, self.step)
        writer.flush()

    def figure(self, name: str, fig: Any) -> None:
        writer = self._open(self.step)
        writer.add_figure(f"figures/{name}", fig, self.step, close=False)
        writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
