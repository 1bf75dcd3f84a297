"""Training health, checked while the run trains, so a run nobody watches never ends silently bad.

Two rules (README, "Training health"):

* **Diverged**: a non-finite training loss (checked at most every ``BATCH_CHECK_S`` seconds during an epoch: the
  running mean stays non-finite once one step was) or a non-finite epoch metric or trainable weight (checked at
  every epoch's end, before the epoch is committed). Training stops at once; the run keeps its last good epoch,
  is marked ``diverged`` and is never promoted (``vgg train`` exits 4).
* **Not learning**: for ``STALL_EPOCHS`` epochs in a row neither sign of learning showed: the loss (validation
  when there is a validation split: dropout keeps the training loss high in a model that learns) fell below
  ``STALL_LOSS_FRACTION`` of the loss of always answering the class shares (ln K for K balanced classes), nor did
  the accuracy (validation when there is one) clearly beat always guessing the most common class (by
  ``CLEAR_MARGIN`` of the way from that guess to 1). One warning says what to change; training goes on (it may
  still recover) and ``promote.min_accuracy: auto`` keeps a model that stays at chance out of production.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import keras
import numpy as np

from vgg_cli.errors import TrainingDiverged
from vgg_cli.runs.rundir import RunDir

log = logging.getLogger("vgg")

BATCH_CHECK_S = 1.0
STALL_EPOCHS = 3
STALL_LOSS_FRACTION = 0.9
CLEAR_MARGIN = 0.1  # an accuracy "clearly" above guessing: chance + 10% of the way from chance to 1


class Diverged(Exception):
    """Raised inside fit when training produced non-finite numbers; the current epoch is not committed."""

    def __init__(self, what: str, epoch: int):
        super().__init__(what)
        self.what, self.epoch = what, epoch


@dataclass
class Baseline:
    """What guessing scores: the loss of always answering the training class shares, and the accuracy of always
    answering the most common class of the images accuracy is measured on. ``floor_loss``: the lowest loss
    possible (above 0 with label smoothing); a loss counts as stuck at or above ``stall_loss``, 90% of the way
    from that floor up to the guessing loss."""
    prior_loss: float
    chance_accuracy: float
    n_classes: int
    floor_loss: float = 0.0

    @property
    def stall_loss(self) -> float:
        return self.floor_loss + STALL_LOSS_FRACTION * (self.prior_loss - self.floor_loss)

    @property
    def learning_accuracy(self) -> float:
        """An accuracy above this clearly beats always guessing the most common class."""
        return self.chance_accuracy + CLEAR_MARGIN * (1 - self.chance_accuracy)

    @classmethod
    def of(cls, train_labels, eval_labels, n_classes: int, label_smoothing: float = 0.0) -> "Baseline":
        train_labels = np.asarray(train_labels, np.int64)
        counts = np.bincount(train_labels, minlength=n_classes).astype(np.float64)
        shares = counts / counts.sum()
        s = label_smoothing
        # cross-entropy of the smoothed targets against the class shares (ln K when balanced, whatever s is)
        target_share = (1 - s) * shares + s / n_classes
        prior_loss = float(-(target_share * np.log(np.clip(shares, 1e-12, None))).sum())
        hi, lo = 1 - s + s / n_classes, s / n_classes
        floor = 0.0 if s == 0 else float(-(hi * math.log(hi) + (n_classes - 1) * lo * math.log(lo)))
        eval_labels = list(eval_labels) or list(train_labels)
        chance = Counter(eval_labels).most_common(1)[0][1] / len(eval_labels)
        return cls(prior_loss, chance, n_classes, floor)

    def describe_loss(self) -> str:
        balanced = math.isclose(self.prior_loss, math.log(self.n_classes), rel_tol=1e-3)
        return f"{self.prior_loss:.3f}" + (f" = ln {self.n_classes}" if balanced else "")


@dataclass
class HealthRecord:
    """summary.json "health": ok | stalled (warned, trained on, still not learning) | recovered (warned, then
    learnt: ``recovered_epoch``) | diverged (stopped)."""
    status: str = "ok"
    stalled_epochs: list[int] = field(default_factory=list)
    warning: str | None = None
    diverged: dict | None = None
    recovered_epoch: int | None = None
    replayed: bool = False  # the epochs committed before this session were checked (not saved)

    def to_dict(self) -> dict:
        warning = self.warning
        if self.status == "recovered" and warning:
            warning = f"recovered at epoch {self.recovered_epoch}: it learns again; earlier, {warning}"
        return {"status": self.status, "stalled_epochs": self.stalled_epochs, "warning": warning,
                "diverged": self.diverged, "recovered_epoch": self.recovered_epoch}


def non_finite_weights(model: keras.Model) -> list[str]:
    """Names of the trainable variables that hold a NaN or an infinity."""
    bad = []
    for v in model.trainable_weights:
        if not bool(keras.ops.all(keras.ops.isfinite(keras.ops.cast(v.value, "float32")))):
            bad.append(v.path)
    return bad


def rate_advice(rate: float, auto: bool, phase: int = 1, head_only: bool = False) -> str:
    """What to change, for the rate a phase used: phase 1's is train.optimizer.learning_rate, phase 2's
    finetune.learning_rate. With every conv block frozen, the features are what is fixed: weak ones (random
    weights) need ImageNet's, more epochs or less dropout more than another rate."""
    lower = f"{rate / 10:g}"
    if phase > 1:
        return (f"lower finetune.learning_rate (now {rate:g}; try {lower}) or unfreeze fewer blocks "
                f"(finetune.unfreeze_blocks)")
    now = f"auto chose {rate:g}; try {lower}" if auto else f"now {rate:g}; try {lower}, or auto"
    if head_only:
        return (f"only the head trains on frozen features: start from model.weights=imagenet, train more epochs, "
                f"lower model.head.dropout, or lower train.optimizer.learning_rate ({now})")
    return (f"lower train.optimizer.learning_rate ({now}), freeze more blocks (model.freeze_blocks) or start "
            f"from model.weights=imagenet")


class HealthCheck(keras.callbacks.Callback):
    """Applies the two rules above. Must come before the callback that commits epochs (RunRecorder)."""

    def __init__(self, baseline: Baseline, record: HealthRecord, rate: float, auto_rate: bool, has_val: bool,
                 phase: int = 1, head_only: bool = False):
        """``record``: this run's, replayed from the committed epochs (``replay``) when a run resumes."""
        super().__init__()
        self.baseline, self.record, self.rate, self.auto_rate = baseline, record, rate, auto_rate
        self.phase, self.head_only = phase, head_only
        self.acc_key, self.loss_key = ("val_accuracy", "val_loss") if has_val else ("accuracy", "loss")
        self._checked = 0.0
        self._epoch = 0
        self._run = 0  # stalled epochs in a row

    def replay(self, rows: list[dict]) -> None:
        """Apply the learning rule to epochs committed before this session (no warning for them is repeated)."""
        warned = self.record.warning is not None
        for row in rows:
            self._check_learning(int(row["epoch"]), row, quiet=True)
        if not warned and self.record.warning is not None:
            log.warning("warning: %s", self.record.warning)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._checked = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if now - self._checked < BATCH_CHECK_S or not logs or "loss" not in logs:
            return  # reading the loss waits for the device: about once a second, not every step
        self._checked = now
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise Diverged(f"training loss became {loss} during epoch {self._epoch} (batch {batch + 1})", self._epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        bad = {k: float(v) for k, v in logs.items() if not math.isfinite(float(v))}
        if bad:
            shown = ", ".join(f"{k} {v}" for k, v in bad.items())
            raise Diverged(f"epoch {epoch + 1} ended with {shown}", epoch + 1)
        weights = non_finite_weights(self.model)
        if weights:
            raise Diverged(f"after epoch {epoch + 1} {len(weights)} weight tensor(s) hold NaN or infinity "
                           f"(e.g. {weights[0]})", epoch + 1)
        self._check_learning(epoch + 1, logs)

    def _check_learning(self, epoch: int, logs: dict, quiet: bool = False) -> None:
        loss_key = self.loss_key if logs.get(self.loss_key) is not None else "loss"
        loss, acc = logs.get(loss_key), logs.get(self.acc_key)
        # (when every scored image is of one class, guessing is perfect and accuracy says nothing)
        acc = acc if self.baseline.chance_accuracy < 1.0 else None
        learns = [loss < self.baseline.stall_loss] if loss is not None else []
        learns += [acc > self.baseline.learning_accuracy] if acc is not None else []
        if not learns or any(learns):
            self._run = 0  # the loss fell or the accuracy clearly beats guessing: it learns
            if self.record.status == "stalled":
                self.record.status, self.record.recovered_epoch = "recovered", epoch
                if not quiet:
                    log.info("health: the model learns again at epoch %d (it had stalled)", epoch)
            return
        self._run += 1
        if self.record.status == "recovered":  # stalled again: the warning stands
            self.record.status, self.record.recovered_epoch = "stalled", None
        if epoch not in self.record.stalled_epochs:
            self.record.stalled_epochs.append(epoch)
        if self._run < STALL_EPOCHS or self.record.warning is not None:
            return
        self.record.status = "stalled"
        self.record.warning = (
            f"the model is not learning: {self._run} epochs in a row (up to epoch {epoch}) stayed at the level of "
            f"guessing; at epoch {epoch} {self._why(loss_key, loss, acc)}; "
            f"{rate_advice(self.rate, self.auto_rate, self.phase, self.head_only)}")
        if not quiet:
            log.warning("warning: %s", self.record.warning)

    def _why(self, loss_key: str, loss, acc) -> str:
        b = self.baseline
        name = "the training loss" if loss_key == "loss" else loss_key
        why = [] if loss is None else [f"{name} {loss:.4g} is above {b.stall_loss:.3f} (guessing the class shares "
                                       f"scores {b.describe_loss()})"]
        if acc is not None:
            why.append(f"{self.acc_key} {float(acc):.3f} is not clearly above {b.chance_accuracy:.3f} (always "
                       f"guessing the most common class; clearly: above {b.learning_accuracy:.3f})")
        return " and ".join(why)


def diverged_error(paths: RunDir, health: dict, rate: float, auto_rate: bool, phase: int = 1) -> TrainingDiverged:
    """The one-line error of a run that diverged: what was kept, and the learning rate to try."""
    d = health["diverged"]
    kept = (f"{paths.best} holds the best of epochs 1-{d['kept_epoch']}" if d["kept_epoch"] else
            "no epoch finished, so there is no model")
    return TrainingDiverged(f"training diverged: {d['what']}; stopped, the run {paths.root} is marked diverged and "
                            f"not promoted ({kept}); {rate_advice(rate, auto_rate, phase)}")
