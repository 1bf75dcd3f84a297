"""Reading a saved vgg model back: safe mode only, one-line errors, and what the model says about itself."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

from vgg_cli.errors import NoInputError
from vgg_cli.model import layers as _layers
from vgg_cli.model import metrics as _metrics
from vgg_cli.model import optim as _optim
from vgg_cli.model import task_parts as _task_parts
from vgg_cli.platform import keras_fixes

# A saved model holds these; loading one needs their Keras registration, which importing the modules does.
REGISTERED = (_layers.VGGPreprocess, _layers.LabelNames, _layers.TemperatureSoftmax, _layers.Standardize,
              _optim.PhaseSchedule, _task_parts.SmoothedSparseCrossentropy, _metrics.Accuracy, _metrics.TopKAccuracy)


def load_model(path: str | os.PathLike, compile: bool = False, what: str = "model file") -> keras.Model:
    """Load a ``.keras`` model of this tool in Keras safe mode (no arbitrary code). A missing, cut-short, damaged
    or code-carrying file is one line (NoInputError, exit 66), never a traceback."""

    p = Path(path)
    if not p.is_file():
        raise NoInputError(f"{what} {str(p)!r} not found; pass a .keras file from a vgg run")
    if not zipfile.is_zipfile(p):  # (Keras says "File not found" of a file that is there but not a whole zip)
        raise NoInputError(f"{what} {str(p)!r} is not a whole .keras file ({p.stat().st_size} bytes, not a complete "
                           f"zip archive: cut short by a full disk or a copy that did not finish?); copy it again "
                           f"or use another run")
    try:
        with keras_fixes.host_initializers():  # every weight comes from the file
            return keras.saving.load_model(p, compile=compile, safe_mode=True)
    except (ValueError, OSError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise NoInputError(f"{what} {str(p)!r} holds code (a Lambda layer) that Keras' safe mode refuses to "
                               f"run, and vgg never loads such files; use a model or checkpoint written by "
                               f"vgg") from None
        raise NoInputError(f"{what} {str(p)!r} could not be loaded ({first[:200]}); is it a complete .keras file "
                           f"from vgg? (a file cut short by a full disk or a copy that did not finish)") from None


def class_names_of(model: keras.Model) -> list[str]:
    try:
        return list(model.get_layer("labels").class_names)
    except ValueError:
        return [str(i) for i in range(model.output_shape[-1])]


def image_size_of(model: keras.Model) -> int:
    return int(model.input_shape[1])


def resize_of(model: keras.Model) -> str:
    """How the model's images are made square (``data.resize``: squash, crop or pad), from its preprocessing layer;
    ``squash`` for a model saved before the setting existed (what it was trained with)."""
    for layer in model.layers:
        if isinstance(layer, _layers.VGGPreprocess):
            return getattr(layer, "resize", "squash")
    return "squash"


def temperature_of(model: keras.Model) -> float:
    """The temperature the model's probabilities are divided by (``TemperatureSoftmax``); 1.0 for a model saved
    before calibration existed (a plain softmax) or not calibrated."""
    for layer in model.layers:
        if isinstance(layer, _layers.TemperatureSoftmax):
            return float(keras.ops.convert_to_numpy(layer.temperature))
    return 1.0


def set_temperature(model: keras.Model, temperature: float) -> bool:
    """Store ``temperature`` in the model's ``TemperatureSoftmax``; False when it has none (an older model)."""
    for layer in model.layers:
        if isinstance(layer, _layers.TemperatureSoftmax):
            layer.temperature.assign(float(temperature))
            return True
    return False
