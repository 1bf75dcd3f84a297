"""Per-epoch checkpoints that survive any crash, and the bookkeeping a resumed run continues from.

After each completed epoch, in this order:

1. ``model/checkpoints/epoch-NNNN.keras``: the whole model with its optimizer state (atomic write).
2. ``state.json``: the commit point. It names that checkpoint and holds every epoch's metrics row and the best
   epoch so far. A run killed before this line is written resumes from the previous epoch, as if the epoch had
   never happened; killed after it, from this one.
3. ``model/best.keras`` (when this epoch is the best so far) and ``model/last.keras``: hard links to (or copies
   of) the checkpoint, replaced atomically; ``metrics.csv`` rewritten from the rows; older checkpoints removed.

Step 3 is derived entirely from ``state.json``, so ``sync`` redoes it on resume and a crash between 2 and 3 leaves
nothing wrong behind. ``best.keras`` changes only when ``state.json`` says a better epoch happened, so it is never
replaced by a worse model, and ``metrics.csv`` has each epoch exactly once.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import gc
import os
import io
import json
import logging
import time
from dataclasses import dataclass, field

import keras

from vgg_cli.platform.device import release_free_memory
from vgg_cli.platform.keras_fixes import streamed_saving
from vgg_cli.errors import DataError, NoInputError
from vgg_cli.fsio import place_copy, write_json, write_text, write_with
from vgg_cli.runs.rundir import RunDir

log = logging.getLogger("vgg")
STATE_VERSION = 1


class Monitor:
    """Which epoch is best: ``val_accuracy`` (ties broken by lower ``val_loss``) or ``val_loss``."""

    def __init__(self, name: str, has_val: bool):
        self.name = name if has_val else name.removeprefix("val_")
        self.loss_key = "val_loss" if has_val else "loss"
        self.mode = "min" if self.name.endswith("loss") else "max"

    def key(self, row: dict) -> tuple[float, float]:
        if self.mode == "min":
            return (-row[self.name], 0.0)
        return (row[self.name], -row[self.loss_key])


@dataclass
class TrainState:
    epochs: int  # planned, all phases
    rows: list[dict] = field(default_factory=list)  # one per completed epoch, in order
    best_epoch: int | None = None
    stopped_early: bool = False
    # Where each phase ends (cumulative epochs): [10] for one phase, [10, 15] with a 5-epoch phase 2. A phase that
    # stops early ends there and the later ones move up.
    phase_ends: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.phase_ends:
            self.phase_ends = [self.epochs]

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return len(self.rows)

    @property
    def phase_index(self) -> int:
        """The phase (0-based) the next epoch belongs to; the last one when all are done."""
        return next((i for i, end in enumerate(self.phase_ends) if self.epoch < end), len(self.phase_ends) - 1)

    def phase_start(self, index: int) -> int:
        return self.phase_ends[index - 1] if index > 0 else 0

    def end_phase_early(self, index: int) -> None:
        """Phase ``index`` stops after the current epoch; later phases keep their lengths and start now."""
        shift = self.phase_ends[index] - self.epoch
        self.phase_ends = self.phase_ends[:index] + [end - shift for end in self.phase_ends[index:]]
        self.epochs = self.phase_ends[-1]

    @property
    def best(self) -> dict | None:
        return self.rows[self.best_epoch - 1] if self.best_epoch else None

    def to_dict(self, paths: RunDir) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "epochs": self.epochs,
                "checkpoint": paths.checkpoint(self.epoch).relative_to(paths.root).as_posix(),
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early, "phase_ends": self.phase_ends,
                "rows": self.rows}


def read_state(paths: RunDir) -> TrainState | None:
    """The committed state of a run, or None if no epoch was ever completed."""
    if not paths.state.is_file():
        return None
    try:
        d = json.loads(paths.state.read_text(encoding="utf-8"))
        state = TrainState(epochs=int(d["epochs"]), rows=list(d["rows"]), best_epoch=d["best_epoch"],
                           stopped_early=bool(d.get("stopped_early", False)),
                           phase_ends=[int(e) for e in d.get("phase_ends") or [d["epochs"]]])
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in state.rows):
            raise ValueError("its rows are not epoch records")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{paths.state} is unreadable ({type(e).__name__}: {e}); the run cannot be resumed, "
                        f"start a new one") from None
    if not paths.checkpoint(state.epoch).is_file():
        raise NoInputError(f"{paths.state} names {paths.checkpoint(state.epoch).name}, which is missing; "
                           f"the run cannot be resumed, start a new one")
    return state


def load_checkpoint(path) -> keras.Model:
    """A run's checkpoint with its optimizer state, to resume from (one line when it is damaged)."""
    from vgg_cli.model.load import load_model

    try:
        return load_model(path, compile=True, what="checkpoint")
    except NoInputError as e:
        raise NoInputError(f"{e}; the run cannot be resumed from it: start a new run") from None


def metrics_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def sync(paths: RunDir, state: TrainState) -> None:
    """Make best.keras, last.keras and metrics.csv agree with the committed state; drop stale checkpoints."""
    current = paths.checkpoint(state.epoch)
    if state.best_epoch == state.epoch:
        place_copy(current, paths.best)
    place_copy(current, paths.last)
    write_text(paths.metrics, metrics_csv(state.rows))
    for old in paths.checkpoints.glob("epoch-*.keras"):
        if old != current:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    # Temp files of a write that was killed: ours (.epoch-*) and Keras' HDF5 weights file (tmp*, see save_model).
    for tmp in [*paths.checkpoints.glob(".epoch-*"), *paths.checkpoints.glob("tmp*")]:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_model(model: keras.Model, path) -> None:
    """``model.save(path)`` (a .keras file) without an in-memory copy of the weights.

    See ``vgg_cli.platform.keras_fixes.streamed_saving`` (the HDF5 temp file ``tmp*`` beside ``path`` is removed
    after; ``sync`` removes one a kill left behind).
    """
    full = False
    try:
        with streamed_saving():
            model.save(path)
    except RuntimeError as e:
        # h5py reports a failed write of the HDF5 temp file as RuntimeError("... errno = 28 ..."): make it the
        # OSError it is, so the atomic write turns it into one line (exit 74) like every other full disk.
        if "errno = 28" not in str(e) and "No space left on device" not in str(e):
            raise
        full = True
    if full:
        # Outside the except block, the failed save's frames are gone; collecting them closes Keras' HDF5 temp
        # file, whose closer deletes it.
        gc.collect()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class RunRecorder(keras.callbacks.Callback):
    """Commits each completed epoch (see the module docstring) and implements early stopping from the rows,
    so a resumed run knows exactly how long it has gone without improving. Early stopping counts within the
    current phase: stopping phase 1 early starts phase 2; stopping the last phase early ends the run."""

    def __init__(self, paths: RunDir, state: TrainState, monitor: Monitor, patience: int, n_train: int,
                 save_model: keras.Model | None = None, phase: int = 1):
        """``save_model``: the whole model to checkpoint when training runs on part of it (cached features);
        default: the model being trained. ``phase``: 1-based, the phase these epochs belong to."""
        super().__init__()
        self.paths, self.state, self.monitor, self.patience, self.n_train = paths, state, monitor, patience, n_train
        self.save_model = save_model
        self.phase = phase
        self._t0 = self._t_val = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._t_val = 0.0

    def on_test_begin(self, logs=None):
        if not self._t_val:
            self._t_val = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        train_s = (self._t_val or end) - self._t0
        metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row = {"epoch": epoch + 1, "phase": self.phase, **metrics, "learning_rate": rate,
               "seconds": round(end - self._t0, 3),
               "images_per_sec": round(self.n_train / train_s, 2) if train_s > 0 else None}
        if epoch + 1 != self.state.epoch + 1:
            raise RuntimeError(f"epoch {epoch + 1} finished but the run has {self.state.epoch} epochs recorded")
        write_with(self.paths.checkpoint(epoch + 1), lambda t: save_model(self.save_model or self.model, t),
                   suffix=".keras")
        best = self.state.best
        improved = best is None or self.monitor.key(row) > self.monitor.key(best)
        self.state.rows.append(row)
        if improved:
            self.state.best_epoch = epoch + 1
        index = self.phase - 1
        since_best = self.state.epoch - max(self.state.best_epoch, self.state.phase_start(index))
        last_phase = index == len(self.state.phase_ends) - 1
        stop = (self.patience > 0 and since_best >= self.patience
                and self.state.epoch < self.state.phase_ends[index])
        if stop:
            self.model.stop_training = True
            if last_phase:
                self.state.stopped_early = True
            else:
                self.state.end_phase_early(index)
        write_json(self.paths.state, self.state.to_dict(self.paths))  # the commit point
        sync(self.paths, self.state)
        release_free_memory()  # what this epoch's decoding and the checkpoint's writing freed
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        log.info("epoch %d/%d  %s  %.1f img/s  %.1fs%s", epoch + 1, self.state.epochs, shown,
                 row["images_per_sec"] or 0.0, row["seconds"], "  *best" if improved else "")
        if stop:
            log.info("early stopping%s: no improvement in %s for %d epochs%s",
                     "" if len(self.state.phase_ends) == 1 else f" phase {self.phase}", self.monitor.name,
                     since_best, "" if last_phase else f"; phase {self.phase + 1} starts now")
