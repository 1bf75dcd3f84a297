"""Training metrics that ignore padding.

A JAX distribution pads a global batch to a multiple of the devices with copies whose sample weight is 0
(``vgg_cli.platform.distribute.pad_batch``). Keras' plain metrics count every row, and its weighted metrics would weigh rows
by class weights too; these count every row whose sample weight is above 0 once, whatever the weight. Without
sample weights, or with class weights (always > 0), they are exactly Keras' own metrics; training compiles them as
``weighted_metrics`` everywhere, so one code path serves one device and many.
"""

from __future__ import annotations

import keras


def _mask(sample_weight):
    if sample_weight is None:
        return None
    return keras.ops.cast(keras.ops.greater(sample_weight, 0), "float32")


@keras.saving.register_keras_serializable(package="vgg_cli")
class Accuracy(keras.metrics.SparseCategoricalAccuracy):
    """SparseCategoricalAccuracy over the rows with sample weight > 0, each counted once."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred, _mask(sample_weight))


@keras.saving.register_keras_serializable(package="vgg_cli")
class TopKAccuracy(keras.metrics.SparseTopKCategoricalAccuracy):
    """SparseTopKCategoricalAccuracy over the rows with sample weight > 0, each counted once."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred, _mask(sample_weight))
