"""How a model trains: optimizer and learning-rate schedule; ``compile_model`` puts them together with the task's
loss and metrics (``vgg_cli.model.task_parts``). The schedule is registered with Keras, so checkpoints that carry
it load back."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from vgg_cli.model.task_parts import parts_of
from vgg_cli.task import SINGLE_LABEL, Task


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
                  learning_rate=None, task: Task = SINGLE_LABEL) -> None:
    """The task's loss and metrics (``vgg_cli.model.task_parts``); a new optimizer from the config (at
    ``learning_rate``, a float or schedule, when given), or ``optimizer`` (to train a view of a model with the
    optimizer, and so the state, of the whole). ``from_logits``: the model outputs logits (``logits_view``)."""
    parts = parts_of(task)
    if optimizer is None:
        optimizer = make_optimizer(train_cfg.optimizer, learning_rate)
    model.compile(optimizer=optimizer, loss=parts.loss(num_classes, train_cfg.label_smoothing, from_logits),
                  weighted_metrics=parts.metrics(num_classes))
