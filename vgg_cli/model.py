"""The model: a keras.applications VGG backbone, its weights, freezing by conv block, and a new head.

Keras APIs only (layers, ``keras.ops``), so the same code can run on Keras' JAX and PyTorch backends. The saved
model takes raw 0-255 RGB images: VGG preprocessing is a layer inside it, and a ``LabelNames`` layer carries
the class names, so a single ``.keras`` file is enough to predict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
from keras import layers, ops

from vgg_cli import fast_init
from vgg_cli.errors import ConfigError, NoInputError
from vgg_cli.metrics import Accuracy, TopKAccuracy  # registered: checkpoints compile with them

ARCHS = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}
# Conv layers per block (names block{b}_conv{i}); both archs have 5 blocks ending in block{b}_pool.
BLOCK_CONVS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_GCS = "https://storage.googleapis.com/tensorflow/keras-applications"
# Exactly what keras.applications downloads for include_top=False (file name, URL, md5).
IMAGENET_NOTOP = {
    "vgg16": ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              f"{_GCS}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              f"{_GCS}/vgg19/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
              "253f8cb515780f3b799900260a226db6"),
}
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_PIXEL_STD = 57.4  # mean of the per-channel pixel std on ImageNet (58.4, 57.1, 57.4)
LOGITS = "head_logits"  # the layer whose output training's loss uses


@keras.saving.register_keras_serializable(package="vgg_cli")
class VGGPreprocess(layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean: ``keras.applications.vgg16.preprocess_input`` as a layer."""

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


# ------------------------------------------------------------------------------------------------ weights


def keras_cache_file(arch: str) -> Path:
    from keras.src.backend.config import keras_home  # where keras.utils.get_file caches by default

    return Path(keras_home()) / "models" / IMAGENET_NOTOP[arch][0]


def imagenet_weights_file(arch: str) -> str:
    """Keras' own download-and-cache of the ImageNet (no-top) weights; one actionable line if it fails."""
    fname, url, md5 = IMAGENET_NOTOP[arch]
    cached = keras_cache_file(arch)
    had_file = cached.is_file()
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5)
    except Exception as e:  # keras raises a bare Exception for URL/HTTP failures
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        state = (f"the cached file {str(cached)!r} is incomplete or corrupt (checksum mismatch) and re-downloading "
                 f"failed ({reason})") if had_file else f"downloading {url} failed ({reason})"
        raise NoInputError(
            f"ImageNet weights for {arch} are not available: {state}. Fix: on a machine with internet, download "
            f"{url} and copy it to {str(cached)!r} (md5 {md5}), or set model.weights=PATH to that file, or "
            f"model.weights=none to start from random weights") from None


def _decode(names) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _load_legacy_h5_by_name(backbone: keras.Model, path: Path) -> None:
    """keras.applications .h5 layout (with or without the top): weights matched by layer name."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise NoInputError(f"model.weights {str(path)!r} is not a readable HDF5 weights file ({e}); "
                           f"check the file or download it again") from None
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise NoInputError(f"model.weights {str(path)!r} is not a keras.applications .h5 weights file "
                               f"(no layer_names); save weights as .weights.h5 or use a keras.applications file")
        names = set(_decode(group.attrs["layer_names"]))
        ours = {layer.name for layer in backbone.layers}
        extra_convs = sorted(n for n in names if n.startswith("block") and "_conv" in n and n not in ours)
        if extra_convs:  # e.g. a VGG19 file (block3_conv4...) given to a VGG16 backbone
            raise ConfigError(f"model.weights {str(path)!r} has conv layers {extra_convs} that {backbone.name} "
                              f"lacks; it is for another architecture: set model.arch to match the file")
        for layer in backbone.layers:
            if not layer.weights:
                continue
            if layer.name not in names:
                raise ConfigError(f"model.weights {str(path)!r} has no layer {layer.name!r}; is it a "
                                  f"{backbone.name} weights file? Set model.arch to match the file")
            lg = group[layer.name]
            arrays = [np.asarray(lg[w]) for w in _decode(lg.attrs["weight_names"])]
            expected = [tuple(w.shape) for w in layer.weights]
            if [a.shape for a in arrays] != expected:
                raise ConfigError(f"model.weights {str(path)!r}: layer {layer.name!r} has shapes "
                                  f"{[a.shape for a in arrays]}, the {backbone.name} backbone needs {expected}; "
                                  f"set model.arch to match the file")
            layer.set_weights(arrays)


def _copy_backbone_from_model(backbone: keras.Model, source: keras.Model, where: str) -> None:
    src = next((l for l in source.layers if isinstance(l, keras.Model) and l.name in ARCHS), None)
    if src is None:
        raise ConfigError(f"model.weights {where} is not a model made by vgg (no vgg16/vgg19 backbone inside); "
                          f"pass a run directory or .keras file from `vgg train`")
    if src.name != backbone.name:
        raise ConfigError(f"model.weights {where} has a {src.name} backbone but model.arch is {backbone.name}; "
                          f"set model.arch={src.name}")
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(src.get_layer(layer.name).get_weights())


def he_initialise(backbone: keras.Model) -> None:
    """Re-draw conv kernels with He-normal init and zero the biases.

    keras.applications builds VGG with Glorot-uniform kernels; with 13-16 ReLU convs and no batch norm the
    activations then shrink layer by layer and a from-scratch VGG does not train at all. He init keeps their
    scale from layer to layer. The first conv is further divided by the spread of its input (VGG preprocessing
    leaves pixels in about -124..152, std ~ 57 on ImageNet), so features start near unit scale instead of ~50x it
    and a new head does not blow up in its first steps. Draws come from NumPy, seeded by ``train.seed`` (through
    ``keras.utils.set_random_seed``), so they repeat, and are the same on every backend; on the host, because
    Keras' own initializers run a backend random op per kernel shape, which JAX compiles once per shape (~8 s for
    VGG16's kernels on a 2-core CPU).
    """
    rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
    first = True
    for layer in backbone.layers:
        if isinstance(layer, layers.Conv2D):
            shape = tuple(int(d) for d in layer.kernel.shape)
            kernel = he_normal(rng, shape)
            if first:
                kernel = kernel / np.float32(IMAGENET_PIXEL_STD)
                first = False
            layer.kernel.assign(kernel)
            layer.bias.assign(np.zeros(tuple(int(d) for d in layer.bias.shape), np.float32))


def he_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Keras' HeNormal on the host: a normal truncated at 2 standard deviations, std sqrt(2 / fan_in) (corrected
    for the truncation, as Keras does)."""
    x = rng.standard_normal(shape, np.float32)
    out = np.abs(x) > 2
    while out.any():
        x[out] = rng.standard_normal(int(out.sum()), np.float32)
        out = np.abs(x) > 2
    fan_in = int(np.prod(shape[:-1]))
    return x * np.float32(np.sqrt(2.0 / fan_in) / 0.87962566103423978)


def __call__(self, shape, dtype=None):
        return np.zeros(shape, dtype or "float32")


def check_weights_available(model_cfg) -> None:
    """Fail fast, before a long dataset scan: fetch (or find in Keras' cache) ImageNet weights, or check that a
    weights PATH exists. Loading them into the backbone happens in ``build_model``."""
    if model_cfg.weights == "imagenet":
        imagenet_weights_file(model_cfg.arch)
    elif model_cfg.weights != "none" and not Path(model_cfg.weights).exists():
        raise _weights_not_found(model_cfg.weights)


def _weights_not_found(weights: str) -> NoInputError:
    import difflib

    close = difflib.get_close_matches(weights, ["imagenet", "none", "production", "latest"], n=1, cutoff=0.7)
    hint = f"did you mean model.weights={close[0]}? Otherwise " if close else ""
    return NoInputError(f"model.weights {weights!r} not found; {hint}set model.weights to imagenet, none, a "
                        f"weights file (.h5/.weights.h5), a .keras model or a run directory")


def load_backbone_weights(backbone: keras.Model, arch: str, weights: str) -> str:
    """Initialise ``backbone`` in place from ``model.weights``; returns a description for the run summary."""
    if weights == "none":
        he_initialise(backbone)
        return "random (He-normal)"
    if weights == "imagenet":
        path = imagenet_weights_file(arch)
        try:
            backbone.load_weights(path)
        except (OSError, ValueError) as e:
            raise NoInputError(f"ImageNet weights file {path!r} could not be loaded ({e}); delete it so Keras "
                               f"downloads it again, or set model.weights=PATH") from None
        return f"imagenet ({path})"
    p = Path(weights)
    if not p.exists():
        raise _weights_not_found(weights)
    if p.is_dir():
        from vgg_cli.runs import find_model_file

        model_file = find_model_file(p)
        _copy_backbone_from_model(backbone, load_model(model_file), repr(weights))
        return f"run {p.resolve()} ({model_file.name})"
    if p.name.endswith(".keras"):
        _copy_backbone_from_model(backbone, load_model(p), repr(weights))
        return f"model {p.resolve()}"
    if p.name.endswith(".weights.h5"):
        try:
            backbone.load_weights(p)
        except (ValueError, OSError, KeyError) as e:
            raise ConfigError(f"model.weights {weights!r} does not fit the {arch} backbone ({str(e).splitlines()[0]}); "
                              f"save it from a {arch} include_top=False model or set model.arch") from None
        return f"file {p.resolve()}"
    if p.suffix in (".h5", ".hdf5"):
        _load_legacy_h5_by_name(backbone, p)
        return f"file {p.resolve()}"
    raise ConfigError(f"model.weights {weights!r} has an unknown type; use a .h5 or .weights.h5 weights file, "
                      f"a .keras model or a run directory")


def copy_head_if_compatible(model: keras.Model, run_dir: Path) -> bool:
    """Warm start: also take the head of an earlier run when it has the same classes and layer shapes."""
    from vgg_cli.runs import find_model_file

    source = load_model(find_model_file(run_dir))
    if class_names_of(source) != class_names_of(model):
        return False
    ours = [l for l in model.layers if l.name.startswith("head_") and l.weights]
    try:
        theirs = [source.get_layer(l.name) for l in ours]
    except ValueError:
        return False
    if any([w.shape for w in a.get_weights()] != [w.shape for w in b.get_weights()] for a, b in zip(ours, theirs)):
        return False
    for a, b in zip(ours, theirs):
        a.set_weights(b.get_weights())
    return True


# ------------------------------------------------------------------------------------------------ building


def conv_layers_by_block(backbone: keras.Model) -> dict[int, list[layers.Layer]]:
    out: dict[int, list[layers.Layer]] = {b: [] for b in range(1, 6)}
    for layer in backbone.layers:
        if isinstance(layer, layers.Conv2D):
            out[int(layer.name[len("block"):].split("_")[0])].append(layer)
    return out


def apply_freeze(backbone: keras.Model, freeze_blocks: Sequence[int]) -> None:
    """Conv layers of the blocks in ``freeze_blocks`` are frozen; all others are trainable."""
    backbone.trainable = True
    for block, convs in conv_layers_by_block(backbone).items():
        for layer in convs:
            layer.trainable = block not in freeze_blocks


def build_backbone(arch: str, image_size: int) -> keras.Model:
    """The keras.applications backbone with placeholder (zero) weights: callers load or draw the real ones."""
    with fast_init.placeholders():  # no random op per kernel shape (JAX compiles each): vgg_cli/fast_init.py
        backbone = ARCHS[arch](include_top=False, weights=None, input_shape=(image_size, image_size, 3))
    return backbone


def augmentation_layers(aug_cfg) -> list[layers.Layer]:
    """Keras random preprocessing layers for ``augment:``; they act only when called with training=True."""
    if aug_cfg is None or not aug_cfg.active:
        return []
    out: list[layers.Layer] = []
    if aug_cfg.flip != "none":
        out.append(layers.RandomFlip(aug_cfg.flip, name="augment_flip"))
    if aug_cfg.rotation:
        out.append(layers.RandomRotation(aug_cfg.rotation, fill_mode="reflect", name="augment_rotation"))
    if aug_cfg.zoom:
        out.append(layers.RandomZoom(aug_cfg.zoom, fill_mode="reflect", name="augment_zoom"))
    if aug_cfg.translation:
        out.append(layers.RandomTranslation(aug_cfg.translation, aug_cfg.translation, fill_mode="reflect",
                                            name="augment_translation"))
    if aug_cfg.contrast:
        out.append(layers.RandomContrast(aug_cfg.contrast, value_range=(0, 255), name="augment_contrast"))
    if aug_cfg.brightness:
        out.append(layers.RandomBrightness(aug_cfg.brightness, value_range=(0, 255), name="augment_brightness"))
    return out


def build_model(model_cfg, image_size: int, class_names: Sequence[str], load_weights: bool = True,
                augment=None) -> tuple[keras.Model, str]:
    """[augmentation] + VGG preprocessing + backbone (+ weights, freezing) + head.
    Returns the model and where its backbone weights came from."""
    backbone = build_backbone(model_cfg.arch, image_size)
    source = load_backbone_weights(backbone, model_cfg.arch, model_cfg.weights) if load_weights else "not loaded"
    apply_freeze(backbone, model_cfg.freeze_blocks)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = inputs
    for layer in augmentation_layers(augment):
        x = layer(x)
    x = VGGPreprocess(name="preprocess")(x)
    x = backbone(x, training=False)
    pool = {"flatten": layers.Flatten, "avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
    x = pool[model_cfg.head.pooling](name=f"head_{model_cfg.head.pooling}_pool")(x)
    rate = model_cfg.head.dropout
    for i, units in enumerate(model_cfg.head.dense, start=1):
        if rate > 0:
            x = layers.Dropout(rate, name=f"head_dropout{i}")(x)
        x = layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
    if rate > 0:
        x = layers.Dropout(rate, name="head_dropout")(x)
    x = layers.Dense(len(class_names), name=LOGITS)(x)
    x = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    outputs = LabelNames(class_names, dtype="float32", name="labels")(x)
    return keras.Model(inputs, outputs, name=f"{model_cfg.arch}_classifier"), source


def frozen_prefix_blocks(freeze_blocks: Sequence[int]) -> int:
    """How many leading conv blocks are frozen: 3 for [1, 2, 3, 5], 0 for [2, 3]."""
    k = 0
    while k + 1 in freeze_blocks:
        k += 1
    return k


def backbone_of(model: keras.Model) -> keras.Model:
    return next(l for l in model.layers if isinstance(l, keras.Model) and l.name in ARCHS)


def split_frozen_prefix(model: keras.Model, blocks: int) -> tuple[keras.Model, keras.Model]:
    """Cut ``model`` after ``block{blocks}_pool``: (prefix, rest). The prefix maps raw images to that block's
    output; the rest maps those activations to the logits (see ``logits_view``). Both are built from the model's own layer
    objects, so training the rest trains ``model``. The model must have no augmentation layers."""
    if not 1 <= blocks <= 5:
        raise ValueError(f"blocks must be 1..5, got {blocks}")
    if any(l.name.startswith("augment_") for l in model.layers):
        raise ValueError("a model with augmentation layers cannot be split: they change the input every epoch")
    backbone = backbone_of(model)
    chain = backbone.layers[1:]  # VGG is a chain; [0] is its InputLayer
    cut = next(i for i, l in enumerate(chain) if l.name == f"block{blocks}_pool") + 1

    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = model.get_layer("preprocess")(inputs)
    for layer in chain[:cut]:
        x = layer(x)
    prefix = keras.Model(inputs, x, name=f"{model.name}_prefix")

    features = keras.Input(shape=tuple(x.shape[1:]), dtype=x.dtype, name="features")
    y = features
    for layer in chain[cut:]:
        y = layer(y)
    after = model.layers[[id(l) for l in model.layers].index(id(backbone)) + 1:]
    for layer in after:
        y = layer(y)
        if layer.name == LOGITS:
            break
    return prefix, keras.Model(features, _as_float32(y), name=f"{model.name}_rest")


def _as_float32(logits):
    """Under mixed precision the logits are float16; the loss and top-k accuracy want float32."""
    if logits.dtype == "float32":
        return logits
    return layers.Activation("linear", dtype="float32", name="logits_float32")(logits)


def logits_view(model: keras.Model) -> keras.Model:
    """The same network (same layer objects) ending at the logits: what training fits, with the loss computed
    from logits. From the softmax output, float32 probabilities underflow and clip at 1e-7 where the model is
    confidently wrong, which kills exactly the gradients it needs (random heads start there)."""
    return keras.Model(model.inputs, _as_float32(model.get_layer(LOGITS).output), name=f"{model.name}_logits")


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
    if isinstance(lr, str):  # "auto" is resolved per phase (train.plan_phases); a bare config cannot say which
        raise ValueError(f"make_optimizer needs a resolved learning rate, got {lr!r}")
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
        if learning_rate is None and train_cfg.optimizer.learning_rate == "auto":
            learning_rate = auto_rate_of(model)
        optimizer = make_optimizer(train_cfg.optimizer, learning_rate)
    model.compile(optimizer=optimizer, loss=loss, weighted_metrics=metrics)


def auto_rate_of(model: keras.Model) -> float:
    """train.optimizer.learning_rate: auto for a model as it is now: the backbone rate when any of its conv
    layers is trainable, else the head-only rate (``config.auto_learning_rate`` decides the same from a config)."""
    from vgg_cli.config import AUTO_RATE_BACKBONE, AUTO_RATE_HEAD_ONLY

    def layers_of(layer):
        yield layer
        for sub in getattr(layer, "layers", []):
            yield from layers_of(sub)

    conv_trains = any(isinstance(x, layers.Conv2D) and x.trainable for x in layers_of(model))
    return AUTO_RATE_BACKBONE if conv_trains else AUTO_RATE_HEAD_ONLY


# ------------------------------------------------------------------------------------------------ reading back


def load_model(path: str | os.PathLike, compile: bool = False, what: str = "model file") -> keras.Model:
    """Load a ``.keras`` model of this tool in Keras safe mode (no arbitrary code). A missing, cut-short, damaged
    or code-carrying file is one line (NoInputError, exit 66), never a traceback."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise NoInputError(f"{what} {str(p)!r} not found; pass a .keras file from a vgg run")
    try:
        with fast_init.placeholders():  # every weight comes from the file
            return keras.saving.load_model(p, compile=compile, safe_mode=True)
    except (ValueError, OSError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise NoInputError(f"{what} {str(p)!r} holds code (a Lambda layer) that Keras' safe mode refuses to "
                               f"run, and vgg never loads such files; use a model or checkpoint written by vgg") from None
        raise NoInputError(f"{what} {str(p)!r} could not be loaded ({first[:200]}); is it a complete .keras file "
                           f"from vgg? (a file cut short by a full disk or a copy that did not finish)") from None


def class_names_of(model: keras.Model) -> list[str]:
    try:
        return list(model.get_layer("labels").class_names)
    except ValueError:
        return [str(i) for i in range(model.output_shape[-1])]


def image_size_of(model: keras.Model) -> int:
    return int(model.input_shape[1])


def original_vgg(arch: str) -> keras.Model:
    """The paper's network with its 1000-way ImageNet top (for ``vgg summary --original``), random weights."""
    return ARCHS[arch](include_top=True, weights=None)
