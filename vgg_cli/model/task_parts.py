"""The Keras half of each task (``vgg_cli.task``), by the task's name: the output layer that turns logits into the
model's answer (with the calibration temperature inside the saved model), the loss training computes from the
logits, and the training metrics. A new task registers its parts in ``PARTS``; the build and the compile ask for
them and never ask which task it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras import ops

from vgg_cli.model.layers import TemperatureSoftmax
from vgg_cli.model.metrics import Accuracy, TopKAccuracy
from vgg_cli.task import Task
from vgg_cli.task.single_label import TOP_K


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


@dataclass(frozen=True)
class TaskParts:
    output_layer: Callable[[str], keras.layers.Layer]  # name -> the layer after head_logits
    loss: Callable[[int, float, bool], keras.losses.Loss]  # (classes, label smoothing, from logits) -> loss
    metrics: Callable[[int], list]  # classes -> metrics (weighted: they skip a JAX distribution's padding)


def _single_label_loss(num_classes: int, label_smoothing: float, from_logits: bool) -> keras.losses.Loss:
    if label_smoothing > 0:
        return SmoothedSparseCrossentropy(num_classes, label_smoothing, from_logits=from_logits)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _single_label_metrics(num_classes: int) -> list:
    metrics: list = [Accuracy(name="accuracy")]
    if num_classes > TOP_K:
        metrics.append(TopKAccuracy(k=TOP_K, name=f"top{TOP_K}_accuracy"))
    return metrics


PARTS: dict[str, TaskParts] = {
    "single_label": TaskParts(
        output_layer=lambda name: TemperatureSoftmax(dtype="float32", name=name),  # temperature 1 until calibrated
        loss=_single_label_loss, metrics=_single_label_metrics),
}


def parts_of(task: Task) -> TaskParts:
    return PARTS[task.name]
