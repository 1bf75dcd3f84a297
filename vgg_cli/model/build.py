"""The model: a keras.applications VGG backbone, freezing by conv block, a new head, and the views training uses
(the frozen prefix and the rest, logits). Its weights: ``vgg_cli.model.weights``; its layers: ``vgg_cli.model.layers``; loss,
metrics and optimizer: ``vgg_cli.model.optim``; reading a saved model: ``vgg_cli.model.load``.

Keras APIs only (layers, ``keras.ops``), so the same code can run on Keras' JAX and PyTorch backends. The saved
model takes raw 0-255 RGB images: VGG preprocessing is a layer inside it, and a ``LabelNames`` layer carries
the class names, so a single ``.keras`` file is enough to predict.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from vgg_cli.config.schema import head_norm
from vgg_cli.model.layers import LabelNames, Standardize, VGGPreprocess
from vgg_cli.model.task_parts import parts_of
from vgg_cli.model.weights import load_backbone_weights
from vgg_cli.platform import keras_fixes
from vgg_cli.task import SINGLE_LABEL, Task
from vgg_cli.task.head import LOGITS

ARCHS = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}
# Conv layers per block (names block{b}_conv{i}); both archs have 5 blocks ending in block{b}_pool.
BLOCK_CONVS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


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
    blocks = conv_layers_by_block(backbone)
    for block, convs in blocks.items():
        for layer in convs:
            layer.trainable = block not in freeze_blocks
    if all(block in freeze_blocks for block in blocks):
        backbone.trainable = False  # says so as a whole (vgg summary, Keras' own summary): nothing in it trains


def build_backbone(arch: str, image_size: int) -> keras.Model:
    """The keras.applications backbone with placeholder (zero) weights: callers load or draw the real ones."""
    with keras_fixes.host_initializers():  # no random op per kernel shape (JAX compiles each)
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


# The head's BatchNormalization: its moving statistics are mostly the last few batches' (Keras' 0.99 averages ~100
# steps, more than a small dataset's whole run at batch 32, while conv blocks that train move the features every
# step). Measured on digits from scratch, 3 epochs: 0.77 test accuracy with 0.9, 0.97-0.98 with the statistics of
# the last 32-128 training images at the final weights (docs/measurements.md).
HEAD_NORM_MOMENTUM = 0.5
STANDARDIZE = "head_standardize"  # the head's Standardize layer (model.head.norm: standard)


def build_model(model_cfg, image_size: int, class_names: Sequence[str], load_weights: bool = True,
                augment=None, resize: str = "squash", task: Task = SINGLE_LABEL,
                norm: str | None = None) -> tuple[keras.Model, str]:
    """[augmentation] + VGG preprocessing + backbone (+ weights, freezing) + head, ending in the ``task``'s output
    layer (``vgg_cli.model.task_parts``).
    ``resize`` (``data.resize``) is recorded in the preprocessing layer: how this model's images are made square.
    ``norm``: the head's normalisation with ``auto`` resolved (``config.schema.head_norm_of``, which knows the
    fine-tuning phase); by default ``model_cfg.head.norm``, ``auto`` resolved as for a run without one.
    Returns the model and where its backbone weights came from."""
    norm = head_norm(norm or model_cfg.head.norm, model_cfg.freeze_blocks)
    backbone = build_backbone(model_cfg.arch, image_size)
    source = load_backbone_weights(backbone, model_cfg.arch, model_cfg.weights) if load_weights else "not loaded"
    apply_freeze(backbone, model_cfg.freeze_blocks)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = inputs
    for layer in augmentation_layers(augment):
        x = layer(x)
    x = VGGPreprocess(resize=resize, name="preprocess")(x)
    x = backbone(x, training=False)
    pool = {"flatten": layers.Flatten, "avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D}
    x = pool[model_cfg.head.pooling](name=f"head_{model_cfg.head.pooling}_pool")(x)
    if norm == "standard":  # features of any scale (a random backbone's: a big offset, small spread)
        x = Standardize(name=STANDARDIZE)(x)
    elif norm == "batch":
        x = layers.BatchNormalization(momentum=HEAD_NORM_MOMENTUM, name="head_norm")(x)
    rate = model_cfg.head.dropout
    for i, units in enumerate(model_cfg.head.dense, start=1):
        if rate > 0 and (i > 1 or norm == "none"):  # not on the features: on what the head learnt
            x = layers.Dropout(rate, name=f"head_dropout{i}")(x)
        x = layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
    if rate > 0:
        x = layers.Dropout(rate, name="head_dropout")(x)
    x = layers.Dense(len(class_names), name=LOGITS)(x)
    x = parts_of(task).output_layer("probabilities")(x)
    outputs = LabelNames(class_names, dtype="float32", name="labels")(x)
    return keras.Model(inputs, outputs, name=f"{model_cfg.arch}_classifier"), source


def backbone_of(model: keras.Model) -> keras.Model:
    return next(l for l in model.layers if isinstance(l, keras.Model) and l.name in ARCHS)


def split_frozen_prefix(model: keras.Model, blocks: int) -> tuple[keras.Model, keras.Model]:
    """Cut ``model`` after ``block{blocks}_pool``: (prefix, rest). The prefix maps raw images to that block's
    output; the rest maps those activations to the logits (see ``logits_view``). Both are built from the model's own
    layer objects, so training the rest trains ``model``. The model must have no augmentation layers."""
    if not 1 <= blocks <= 5:
        raise ValueError(f"blocks must be 1..5, got {blocks}")
    if any(l.name.startswith("augment_") for l in model.layers):
        raise ValueError("a model with augmentation layers cannot be split: they change the input every epoch")
    return split_after(model, f"block{blocks}_pool")


def last_conv_name(model: keras.Model) -> str:
    """The backbone's last conv layer (block5_conv3 in VGG16, block5_conv4 in VGG19): Grad-CAM's default."""
    return [l for l in backbone_of(model).layers if isinstance(l, layers.Conv2D)][-1].name


def split_after(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.Model]:
    """Cut ``model`` after the backbone layer ``layer_name``: (raw images -> its output, its output -> logits), both
    of the model's own layer objects. Augmentation layers are left out (they act only in training)."""
    prefix, chain_rest = _prefix_until(model, layer_name)
    features = keras.Input(shape=tuple(prefix.output.shape[1:]), dtype=prefix.output.dtype, name="features")
    y = _through_head(model, _through(chain_rest, features), LOGITS, inclusive=True)
    return prefix, keras.Model(features, _as_float32(y), name=f"{model.name}_rest")


def standardize_input_view(model: keras.Model, blocks: int | None) -> keras.Model:
    """What the head's ``Standardize`` layer (``head_standardize``) takes, the pooled features, computed from
    ``block{blocks}_pool`` activations (the cached-feature input) or, with ``blocks`` None, from raw images. Of the
    model's own layer objects; augmentation left out."""
    if blocks is None:
        prefix, _ = _prefix_until(model, None)
        y = _through_head(model, prefix.output, STANDARDIZE, inclusive=False)
        return keras.Model(prefix.input, y, name=f"{model.name}_pooled")
    prefix, chain_rest = _prefix_until(model, f"block{blocks}_pool")
    features = keras.Input(shape=tuple(prefix.output.shape[1:]), dtype=prefix.output.dtype, name="features")
    y = _through_head(model, _through(chain_rest, features), STANDARDIZE, inclusive=False)
    return keras.Model(features, y, name=f"{model.name}_pooled")


def _prefix_until(model: keras.Model, layer_name: str | None) -> tuple[keras.Model, list]:
    """(raw images -> the backbone's output at ``layer_name``, None = its end; the backbone layers after it)."""
    chain = backbone_of(model).layers[1:]  # VGG is a chain; [0] is its InputLayer
    names = [l.name for l in chain]
    if layer_name is not None and layer_name not in names:
        raise ValueError(f"{layer_name!r} is not a layer of the {backbone_of(model).name} backbone "
                         f"({', '.join(names)})")
    cut = len(chain) if layer_name is None else names.index(layer_name) + 1
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = _through(chain[:cut], model.get_layer("preprocess")(inputs))
    return keras.Model(inputs, x, name=f"{model.name}_prefix"), chain[cut:]


def _through(chain, x):
    for layer in chain:
        x = layer(x)
    return x


def _through_head(model: keras.Model, y, stop: str, inclusive: bool):
    """``y`` (the backbone's output) through the model's layers after the backbone, up to the layer ``stop``."""
    backbone = backbone_of(model)
    for layer in model.layers[[id(l) for l in model.layers].index(id(backbone)) + 1:]:
        if layer.name == stop and not inclusive:
            return y
        y = layer(y)
        if layer.name == stop:
            return y
    raise ValueError(f"{model.name} has no layer {stop!r} after its backbone")


def head_tensors(model: keras.Model) -> tuple:
    """(penultimate features, logits): the input and output of ``head_logits`` in ``model``'s own graph (the
    layer's latest call: a model rebuilt from another's layers, as ``export.formats.inference_model`` does, calls
    them again)."""
    node = model.get_layer(LOGITS)._inbound_nodes[-1]
    return node.input_tensors[0], node.output_tensors[0]


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


def original_vgg(arch: str) -> keras.Model:
    """The paper's network with its 1000-way ImageNet top (for ``vgg summary --original``), random weights."""
    return ARCHS[arch](include_top=True, weights=None)
