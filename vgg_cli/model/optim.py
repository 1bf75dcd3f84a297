"""How a model trains: loss (with label smoothing), metrics, optimizer, learning-rate schedule, and the `auto`
learning rate; ``compile_model`` puts them together. The schedule, loss and metrics are registered with Keras, so
checkpoints that carry them load back."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from vgg_cli.model.metrics import Accuracy, TopKAccuracy  # registered: checkpoints compile with them


@keras.saving.register_keras_serializable(package="vgg_cli")
class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at each optimizer step of one training phase (``train.schedule``).

    ``constant``: ``rate``; ``cosine``: from ``rate`` at the end of the warmup down to 0 at ``total_steps``;
    ``step``: ``rate * step_factor ** (step // step_steps)``. A warmup of ``warmup_steps`` multiplies the rate by
    ``(step + 1) / warmup_steps`` until it reaches 1. Each phase has its own optimizer, so ``step`` counts from 0 at
    the start of the phase; it is restored with the optimizer on resume.
    """

    def __init__(self, rate: float, total_steps: int, kind: str = "constant", warmup_steps: int = 0,
                 step_steps: int = 1, step_factor: float = 0.1):
        self.rate, self.total_steps, self.kind = float(rate), int(total_steps), kind
        self.warmup_steps, self.step_steps, self.step_factor = int(warmup_steps), int(step_steps), float(step_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.rate, "float32")
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            rate = rate * 0.5 * (1.0 + ops.cos(np.pi * progress))
        elif self.kind == "step":
            rate = rate * ops.power(self.step_factor, ops.floor(step / self.step_steps))
        if self.warmup_steps > 0:
            rate = rate * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return rate

    def get_config(self):
        return {"rate": self.rate, "total_steps": self.total_steps, "kind": self.kind,
                "warmup_steps": self.warmup_steps, "step_steps": self.step_steps, "step_factor": self.step_factor}


def learning_rate_for(schedule_cfg, rate: float, epochs: int, steps_per_epoch: int):
    """A float for a constant rate without warmup (what the optimizer would get anyway), else a PhaseSchedule."""
    warmup = round(schedule_cfg.warmup_epochs * steps_per_epoch)
    if schedule_cfg.name == "constant" and warmup == 0:
        return rate
    return PhaseSchedule(rate, epochs * steps_per_epoch, schedule_cfg.name, warmup,
                         schedule_cfg.step_epochs * steps_per_epoch, schedule_cfg.step_factor)


@keras.saving.register_keras_serializable(package="vgg_cli")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has no ``label_smoothing``)."""

    def __init__(self, num_classes: int, label_smoothing: float, from_logits: bool = False,
                 name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.label_smoothing, self.from_logits = int(num_classes), float(label_smoothing), from_logits

    def call(self, y_true, y_pred):
        onehot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(onehot, y_pred, from_logits=self.from_logits,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing,
                "from_logits": self.from_logits}


def make_optimizer(opt_cfg, learning_rate=None):
    """The optimizer ``opt_cfg`` names; ``learning_rate`` (a float or a schedule) replaces its rate."""
    lr = opt_cfg.learning_rate if learning_rate is None else learning_rate
    if isinstance(lr, str):  # "auto" is resolved per phase, in vgg_cli.training.plan only
        raise ValueError(f"make_optimizer needs a resolved learning rate (vgg_cli.training.plan), got {lr!r}")
    wd = opt_cfg.weight_decay or None
    if opt_cfg.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)
    if opt_cfg.name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=opt_cfg.weight_decay)
    if opt_cfg.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=opt_cfg.momentum, weight_decay=wd)
    return keras.optimizers.RMSprop(learning_rate=lr, momentum=opt_cfg.momentum, weight_decay=wd)


def compile_model(model: keras.Model, train_cfg, num_classes: int, optimizer=None, from_logits: bool = False,
                  learning_rate=None) -> None:
    """Loss and metrics; a new optimizer from the config (at ``learning_rate``, a float or schedule, when given),
    or ``optimizer`` (to train a view of a model with the optimizer, and so the state, of the whole).
    ``from_logits``: the model outputs logits (``logits_view``)."""
    metrics: list = [Accuracy(name="accuracy")]  # weighted only to skip a JAX distribution's padding
    if num_classes > 5:
        metrics.append(TopKAccuracy(k=5, name="top5_accuracy"))
    if train_cfg.label_smoothing > 0:
        loss = SmoothedSparseCrossentropy(num_classes, train_cfg.label_smoothing, from_logits=from_logits)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    if optimizer is None:
        optimizer = make_optimizer(train_cfg.optimizer, learning_rate)
    model.compile(optimizer=optimizer, loss=loss, weighted_metrics=metrics)
