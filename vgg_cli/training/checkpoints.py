"""Per-epoch checkpoints that survive any crash, and the bookkeeping a resumed run continues from.

After each completed epoch, in this order:

1. The epoch's checkpoint in ``model/checkpoints/`` (atomic write): ``epoch-NNNN.keras``, the whole model with its
   optimizer state, or, when most of the model is frozen, ``epoch-NNNN.delta.npz``, only the variables that changed
   since a base ``epoch-KKKK.keras`` of the same phase (``vgg_cli.training.snapshots``).
2. ``state.json``: the commit point. It names that checkpoint (and the best epoch's) and holds every epoch's
   metrics row and the best epoch so far. A run killed before this line is written resumes from the previous
   epoch, as if the epoch had never happened; killed after it, from this one.
3. ``model/best.keras`` (when this epoch is the best so far) and ``model/last.keras``: hard links to (or copies
   of) a full checkpoint, replaced atomically; ``metrics.csv`` rewritten from the rows; checkpoints no longer
   needed removed (the current one, the best epoch's and the bases they name are kept).

Step 3 is derived entirely from ``state.json``, so ``sync`` redoes it on resume and a crash between 2 and 3 leaves
nothing wrong behind. ``best.keras`` changes only when ``state.json`` says a better epoch happened, so it is never
replaced by a worse model, and ``metrics.csv`` has each epoch exactly once. A light (delta) epoch's best.keras and
last.keras are built once, when the session ends (``finalize``): plain Keras files, as after a full epoch.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import gc
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras

from vgg_cli.errors import DataError, NoInputError
from vgg_cli.fsio import place_copy, write_json, write_text, write_with
from vgg_cli.platform.device import release_free_memory
from vgg_cli.platform.keras_fixes import streamed_saving
from vgg_cli.runs.rundir import RunDir
from vgg_cli.training import snapshots

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
    # File names in model/checkpoints/ of the last completed epoch's checkpoint and the best epoch's (None: the
    # epoch-NNNN.keras of that epoch, as in runs written before light checkpoints)
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    # This session's base for light checkpoints (never written to state.json: a delta names its base file)
    base: snapshots.Base | None = field(default=None, repr=False, compare=False)

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

    def checkpoint_path(self, paths: RunDir) -> Path:
        """The last completed epoch's checkpoint."""
        return paths.checkpoints / self.checkpoint if self.checkpoint else paths.checkpoint(self.epoch)

    def best_path(self, paths: RunDir) -> Path | None:
        if not self.best_epoch:
            return None
        return paths.checkpoints / self.best_checkpoint if self.best_checkpoint else paths.checkpoint(self.best_epoch)

    def to_dict(self, paths: RunDir) -> dict:
        best = self.best_path(paths)
        return {"version": STATE_VERSION, "epoch": self.epoch, "epochs": self.epochs,
                "checkpoint": self.checkpoint_path(paths).relative_to(paths.root).as_posix(),
                "best_checkpoint": best.relative_to(paths.root).as_posix() if best else None,
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
                           phase_ends=[int(e) for e in d.get("phase_ends") or [d["epochs"]]],
                           checkpoint=_name_in(d.get("checkpoint")), best_checkpoint=_name_in(d.get("best_checkpoint")))
        if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) for r in state.rows):
            raise ValueError("its rows are not epoch records")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{paths.state} is unreadable ({type(e).__name__}: {e}); the run cannot be resumed, "
                        f"start a new one") from None
    needed = [state.checkpoint_path(paths)]
    if snapshots.is_delta(needed[0]) and needed[0].is_file():
        needed.append(snapshots.base_of(needed[0]))
    for path in needed:
        if not path.is_file():
            raise NoInputError(f"{paths.state} needs {path.name}, which is missing; the run cannot be resumed, "
                               f"start a new one")
    return state


def _name_in(recorded) -> str | None:
    """The file name of a checkpoint path recorded in state.json (model/checkpoints/NAME), or None."""
    return Path(recorded).name if isinstance(recorded, str) and recorded else None


def load_checkpoint(path: Path) -> tuple[keras.Model, snapshots.Base | None]:
    """A run's checkpoint with its optimizer state, to resume from (one line when it is damaged), and the base
    that later light checkpoints of this session can refer to (None: there is none worth it)."""
    from vgg_cli.model.load import load_model

    full = snapshots.base_of(path) if snapshots.is_delta(path) else path
    try:
        model = load_model(full, compile=True, what="checkpoint")
    except NoInputError as e:
        raise NoInputError(f"{e}; the run cannot be resumed from it: start a new run") from None
    base = snapshots.Base.of(full, model) if snapshots.worth_it(model) else None
    if full != path:
        snapshots.apply_delta(model, path)
    return model, base


def materialize(path: Path, target: Path) -> None:
    """Make ``target`` (best.keras or last.keras) the plain Keras model a checkpoint holds: a hard link to a full
    one, or a light one loaded onto its base and saved."""
    if not snapshots.is_delta(path):
        place_copy(path, target)
        return
    model, _ = load_checkpoint(path)
    write_with(target, functools.partial(save_model, model), suffix=".keras")
    del model
    release_free_memory()


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
    """Make best.keras, last.keras (for a full checkpoint) and metrics.csv agree with the committed state; drop
    checkpoints no longer needed."""
    current = state.checkpoint_path(paths)
    if not snapshots.is_delta(current):
        if state.best_epoch == state.epoch:
            place_copy(current, paths.best)
        place_copy(current, paths.last)
    write_text(paths.metrics, metrics_csv(state.rows))
    # A light best epoch is kept until finalize has built best.keras from it; a full one is best.keras already
    keep = {current} | {p for p in [state.best_path(paths)] if p is not None and snapshots.is_delta(p)}
    keep |= {snapshots.base_of(p) for p in list(keep) if snapshots.is_delta(p) and p.is_file()}
    for old in paths.checkpoints.glob("epoch-*"):
        if old not in keep:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    # Temp files of a write that was killed: ours (.epoch-*) and Keras' HDF5 weights file (tmp*, see save_model).
    for tmp in [*paths.checkpoints.glob(".epoch-*"), *paths.checkpoints.glob("tmp*")]:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def finalize(paths: RunDir, state: TrainState | None, model: keras.Model | None = None) -> None:
    """At the end of a session: best.keras and last.keras built from light checkpoints (full ones are linked by
    sync), the last epoch then committed as a full checkpoint (a link to last.keras), so the bases and deltas go
    and the run holds what it held before light checkpoints. ``model``: the session's model, saved as the last
    epoch's instead of loading that again when it is exactly what the checkpoint holds (checked, not assumed: a
    signal can stop training mid-epoch)."""
    if state is None or not state.epoch:
        return
    current, best = state.checkpoint_path(paths), state.best_path(paths)
    if not (snapshots.is_delta(current) or (best is not None and snapshots.is_delta(best))):
        return
    if snapshots.is_delta(current):
        if model is not None and snapshots.holds(model, current, state.base):
            write_with(paths.last, functools.partial(save_model, model), suffix=".keras")
        else:
            materialize(current, paths.last)
    if best is not None and snapshots.is_delta(best):
        if best == current:
            place_copy(paths.last, paths.best)
        else:
            materialize(best, paths.best)
        state.best_checkpoint = paths.checkpoint(state.best_epoch).name  # as full epochs: best.keras holds it
    if snapshots.is_delta(current):
        place_copy(paths.last, paths.checkpoint(state.epoch))
        state.checkpoint = paths.checkpoint(state.epoch).name
    state.base = None
    write_json(paths.state, state.to_dict(paths))  # the same models, now as full checkpoints
    sync(paths, state)


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
        written = self._write_checkpoint(self.save_model or self.model, epoch + 1)
        best = self.state.best
        improved = best is None or self.monitor.key(row) > self.monitor.key(best)
        self.state.rows.append(row)
        self.state.checkpoint = written.name
        if improved:
            self.state.best_epoch, self.state.best_checkpoint = epoch + 1, written.name
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

    def _write_checkpoint(self, model: keras.Model, epoch: int) -> Path:
        """Epoch ``epoch``'s checkpoint, not yet committed: a delta against this session's base when one fits
        (same phase), else a full one, which becomes the base when most of the model is frozen."""
        base = self.state.base
        if base is not None and base.fits(model):
            path = self.paths.checkpoints / f"epoch-{epoch:04d}{snapshots.DELTA_SUFFIX}"
            snapshots.write_delta(model, base, path)
            return path
        path = self.paths.checkpoint(epoch)
        write_with(path, lambda t: save_model(model, t), suffix=".keras")
        self.state.base = snapshots.Base.of(path, model) if snapshots.worth_it(model) else None
        return path

