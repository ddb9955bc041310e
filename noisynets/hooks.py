"""The pieces beside a run's training loop: each does one thing after a step, after an epoch,
and at the end (as Lightning's callbacks or Keras's split them).

A hook has three methods, each a no-op unless the hook needs it::

    hook.on_step(step, loss)   # after every applied step; loss: the step's mean reference-pass
                               # loss, a 0-d tensor on the device (not read here: no host sync)
    hook.on_epoch(stats)       # after every epoch's evaluation (an ``EpochStats``)
    hook.close()               # at the end of the run, also after an error

``noisynets.run`` builds the list of a run's hooks and calls them in order; each piece here
writes one file or prints one thing:

* ``MetricsCSV`` -- ``metrics.csv``, one row per evaluation (epoch 0: before training), the
  columns of the trace file's metrics (per-layer values as ``alignment_layer_1``, ...);
* ``StepLossCSV`` -- ``steps.csv``, the loss of every step (``step, epoch, loss, lr``), read
  from the device once per epoch;
* ``TensorBoard`` -- ``torch.utils.tensorboard.SummaryWriter`` event files in
  ``tensorboard/`` (the ``[tensorboard]`` extra): ``train/step_loss`` per step, every metric
  per epoch as ``epoch/<name>`` at the epoch's last step;
* ``EarlyStopping`` -- not a file: ``fit``'s ``stop``, true after ``patience`` epochs without
  a new lowest validation loss.

On ``--resume`` each file is cut back to what the checkpoint holds and continued, so a resumed
run's files are those of the run uninterrupted.
"""

from __future__ import annotations

import csv
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from noisynets.traces import flatten_metrics
from noisynets.training import EpochStats

METRICS_FILE = "metrics.csv"
STEPS_FILE = "steps.csv"
TENSORBOARD_FOLDER = "tensorboard"


class Hook:
    """A piece beside the training loop (module doc); every method does nothing here."""

    def on_step(self, step: int, loss: Tensor) -> None:
        pass

    def on_epoch(self, stats: EpochStats) -> None:
        pass

    def close(self) -> None:
        pass


def _cell(value: Any) -> Any:
    """A CSV cell: empty for a value not measured (None) or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


class MetricsCSV(Hook):
    """``metrics.csv``: a header of ``columns``, then one row per evaluation, flushed at once;
    ``rows`` (the evaluations a resumed run already has) are written first."""

    def __init__(self, path: Path, columns: Sequence[str], rows: Sequence[EpochStats]) -> None:
        self.path, self.columns = path, list(columns)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for stats in rows:
                w.writerow(self._row(stats))

    def _row(self, stats: EpochStats) -> list[Any]:
        flat = flatten_metrics(asdict(stats))
        return [_cell(flat.get(name)) for name in self.columns]

    def on_epoch(self, stats: EpochStats) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow(self._row(stats))


class StepLoss(Hook):
    """Keeps the losses of an epoch's steps on the device and hands them over once per epoch
    as ``(step, loss)`` floats to ``write`` (one host sync per epoch, not per step)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[Tensor] = []

    def on_step(self, step: int, loss: Tensor) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def on_epoch(self, stats: EpochStats) -> None:
        losses = torch.stack(self.losses).tolist() if self.losses else []
        self.write(stats, list(zip(self.steps, losses)))
        self.steps, self.losses = [], []

    def write(self, stats: EpochStats, rows: list[tuple[int, float]]) -> None:
        raise NotImplementedError


class StepLossCSV(StepLoss):
    """``steps.csv``: ``step, epoch, loss, lr``, one row per applied step (a step skipped by
    the divergence guard has none). Resumed after ``last_step``: later rows are dropped."""

    def __init__(self, path: Path, last_step: int | None = None) -> None:
        super().__init__()
        self.path = path
        kept: list[list[str]] = []
        if last_step is not None and path.exists():
            with path.open(newline="") as f:
                kept = [row for row in list(csv.reader(f))[1:]
                        if row and row[0].isdigit() and int(row[0]) <= last_step]
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "epoch", "loss", "lr"])
            w.writerows(kept)

    def write(self, stats: EpochStats, rows: list[tuple[int, float]]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows([step, stats.epoch, _cell(loss), _cell(stats.lr)]
                                    for step, loss in rows)


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``; ``ValueError`` naming the extra to install
    when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install "
                         "'noisynets[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter


class TensorBoard(StepLoss):
    """Event files for TensorBoard: ``train/step_loss`` at every step, and every metric of an
    evaluation as ``epoch/<name>`` at its step (per-layer ones as ``epoch/alignment_layer_1``,
    ...). Resumed after ``last_step``: later events are purged (``SummaryWriter`` purge_step).

    The folder must take a file before the writer starts (a read-only one is refused in one
    line). ``SummaryWriter`` writes from a thread of its own; an error there (a disk that
    fills up) is not printed by that thread but raised by the writer's next call here, as
    one ``ValueError`` naming the folder."""

    def __init__(self, folder: Path, rows: Sequence[EpochStats] = (),
                 last_step: int | None = None) -> None:
        super().__init__()
        self.folder = folder
        writable(folder)
        _quiet_writer_threads()
        with self._writing():
            self.writer = summary_writer_class()(
                log_dir=str(folder), purge_step=None if last_step is None else last_step + 1)
        if last_step is None:
            for stats in rows:
                self._metrics(stats)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A call of the writer: its failure (or its thread's) is one ``ValueError``."""
        from noisynets.files import why

        try:
            yield
        except Exception as e:  # OSError, or whatever its thread met
            raise ValueError(f"cannot write {str(self.folder)!r}: {why(e)}") from None

    def _metrics(self, stats: EpochStats) -> None:
        with self._writing():
            for name, value in flatten_metrics(asdict(stats)).items():
                if name in ("epoch", "step") or isinstance(value, bool) or value is None:
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"epoch/{name}", value, stats.step)

    def write(self, stats: EpochStats, rows: list[tuple[int, float]]) -> None:
        with self._writing():
            for step, loss in rows:
                self.writer.add_scalar("train/step_loss", loss, step)
        self._metrics(stats)
        with self._writing():
            self.writer.flush()

    def close(self) -> None:
        with self._writing():
            self.writer.close()


def writable(folder: Path) -> None:
    """``folder`` exists (made if need be) and takes a new file; else one ``ValueError``."""
    import tempfile

    from noisynets.files import why

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write {str(folder)!r}: {why(e)}") from None


def _quiet_writer_threads() -> None:
    """From now on an exception that ends a TensorBoard writer's own thread is left to the
    writer, which raises it at its next call (``_AsyncWriter._check_worker_status``);
    every other thread's goes to the hook there was."""
    previous = threading.excepthook
    if getattr(previous, "noisynets", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.noisynets = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class EarlyStopping:
    """``stop(stats)`` is true once ``patience`` epochs in a row brought no validation loss
    below the lowest so far (Keras's ``EarlyStopping(monitor="val_loss", patience)``, with
    ``min_delta = 0``). ``history`` (a resumed run's epochs) sets the state it continues from."""

    def __init__(self, patience: int, history: Sequence[EpochStats] = ()) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.waited = 0
        for stats in history:
            self.update(stats)

    def update(self, stats: EpochStats) -> None:
        loss = stats.val_loss
        if loss is not None and loss < self.best:
            self.best, self.best_epoch, self.waited = loss, stats.epoch, 0
        else:
            self.waited += 1

    def __call__(self, stats: EpochStats) -> bool:
        self.update(stats)
        return self.waited >= self.patience
