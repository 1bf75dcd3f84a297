"""The layers vgg adds to a model, registered with Keras so a saved ``.keras`` file loads back in safe mode:
VGG preprocessing inside the model (it takes raw 0-255 RGB), the head's standardisation, the calibrated softmax, and
the class names riding on the output."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers, ops

from vgg_cli.data.images import RESIZE_MODES

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="vgg_cli")
class VGGPreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean: ``keras.applications.vgg16.preprocess_input`` as a layer.

    ``resize`` records how the model's images were made square (``data.resize``: squash, crop or pad; see
    ``vgg_cli.data.images``) so that prediction, evaluation, Grad-CAM and exports decode the same way. It does not
    act on the tensor: the model takes images that are already S x S. A file saved before it existed loads as
    ``squash``, what every model was trained with then."""

    def __init__(self, resize: str = RESIZE_MODES[0], **kwargs):
        super().__init__(**kwargs)
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.resize = resize

    def get_config(self):
        return {**super().get_config(), "resize": self.resize}

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="vgg_cli")
class LabelNames(layers.Layer):
    """Identity on the class probabilities; its config carries the class names in index order."""

    def __init__(self, class_names: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.class_names = list(class_names)

    def call(self, x):
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}


@keras.saving.register_keras_serializable(package="vgg_cli")
class TemperatureSoftmax(layers.Layer):
    """``softmax(logits / temperature)``: the class probabilities, calibrated by temperature scaling.

    ``temperature`` is a non-trainable weight, 1.0 (plain softmax, bit for bit) while training: the loss is computed
    from the logits, so it never acts there. After training, ``vgg_cli.evaluation.calibrate`` writes the value
    fitted on the validation split into the finished run's model files, so prediction, evaluation and every export
    give calibrated probabilities. A model saved before this layer existed has a plain softmax (temperature 1)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trainable", False)  # its one weight is set by calibration, never by training
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.temperature = self.add_weight(name="temperature", shape=(), initializer="ones", trainable=False,
                                           dtype="float32")
        super().build(input_shape)

    def call(self, x):
        x = ops.cast(x, "float32")
        return ops.softmax(x / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="vgg_cli")
class Standardize(layers.Layer):
    """``(x - mean) * inv_std`` per feature: the head's fixed standardisation (``model.head.norm: standard``).

    The statistics are fitted once, before the first training step, from the training images' features
    (``vgg_cli.training.standardize``) and stored as non-trainable weights, so prediction, every export and the
    light runtime apply exactly what training saw. Until then it is the identity (``images`` 0: not fitted); a run
    that resumes or keeps a production head keeps the statistics it has. Unlike a BatchNormalization, nothing moves
    while training: no lag in a short run, the same numbers on every replica."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trainable", False)  # set by fitting, never by the optimizer
        super().__init__(**kwargs)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.mean = self.add_weight(name="mean", shape=(d,), initializer="zeros", trainable=False, dtype="float32")
        self.inv_std = self.add_weight(name="inv_std", shape=(d,), initializer="ones", trainable=False,
                                       dtype="float32")
        self.images = self.add_weight(name="images", shape=(), initializer="zeros", trainable=False,
                                      dtype="float32")
        super().build(input_shape)

    def call(self, x):
        return (x - ops.cast(self.mean, x.dtype)) * ops.cast(self.inv_std, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
