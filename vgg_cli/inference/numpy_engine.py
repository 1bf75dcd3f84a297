"""A forward pass in NumPy alone, for a vgg ``.keras`` file: ``vgg predict`` on a few images without importing
TensorFlow or Keras (their import and the model load are ~4 s of a one-image run; this engine starts in well under
one).

It reads the file directly (a zip of ``config.json`` and ``model.weights.h5``) and evaluates exactly the network
``vgg_cli.model.build.build_model`` makes: ``VGGPreprocess`` (RGB -> BGR minus the ImageNet mean), the VGG16/VGG19
conv blocks (3x3 same convolutions + ReLU, 2x2 max-pooling), the head (flatten / global average / global max
pooling, its ``Standardize`` or BatchNormalization, Dense layers, Dropout inactive), ``head_logits``,
``TemperatureSoftmax`` and ``LabelNames`` (a model saved before ``TemperatureSoftmax`` existed is declined: Keras
answers it bit for bit as before). Augmentation layers are identity at inference and skipped.
Anything else (another layer, a setting of a known layer it does not reproduce, a mixed-precision dtype policy, a
graph that is not one chain) raises ``Declined`` with the reason, and the caller uses Keras.

``NumpyModel.forward`` gives what ``vgg_cli.inference.forward.Forward`` gives: probabilities, logits and the
input of ``head_logits`` (the out-of-distribution features), each averaged over test-time-augmentation views.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vgg_cli.task.head import LOGITS, head_digest, softmax

IMAGENET_BGR_MEAN = np.array((103.939, 116.779, 123.68), np.float32)  # as vgg_cli.model.layers (no Keras import)
AUGMENTATION = {"RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                "RandomBrightness"}  # identity at inference
POOLS = {"Flatten": "flatten", "GlobalAveragePooling2D": "avg", "GlobalMaxPooling2D": "max"}
ACTIVATIONS = {"linear", "relu", "softmax"}
BACKBONES = {"vgg16": 13, "vgg19": 16}  # conv layers


# ``--engine auto`` uses this engine up to this much work, counted in 224 px image-views (each --tta copy is a view).
# Measured on 2 cores (docs/speed.md, "One image"; issue 36): NumPy costs ~0.35-0.6 s more per 224 px image than
# Keras' ~0.27 s, but skips the 7-9 s of importing TensorFlow and loading the model; whole `vgg predict`
# processes, NumPy over Keras: 0.81x the wall at 16 images, 1.10x at 32. A small image is not cheaper in
# proportion: at 64 px NumPy still took 0.39 s an image (60.9 s for 153, Keras 18.7 s), so an image-view at S px
# counts FIXED + (1 - FIXED) * (S/224)^2 of a 224 px one (fitted to both sizes: 64 px counts 0.68).
AUTO_MAX_224PX = 16
FIXED = 0.65


def work_of(images: int, views: int, size: int) -> float:
    """An answer's work for this engine, in 224 px image-views."""
    return images * views * (FIXED + (1 - FIXED) * (size / 224) ** 2)


class Declined(Exception):
    """This engine cannot reproduce the model exactly; the message says why (Keras answers instead)."""


@dataclass
class NumpyModel:
    """A vgg model as NumPy arrays: ``steps`` from the raw image to the logits, then the output activation."""
    class_names: list[str]
    image_size: int
    resize: str
    convs: list = field(repr=False, default_factory=list)  # [(kernel (3,3,Cin,Cout), bias) or "pool"]
    pooling: str = "flatten"
    norm: tuple | None = field(repr=False, default=None)  # the head's Standardize or BatchNormalization: (scale, shift)
    dense: list = field(repr=False, default_factory=list)  # [(kernel, bias, activation)], head_logits last
    temperature: float = 1.0  # TemperatureSoftmax's (a model saved before calibration is declined)
    digest: str = ""  # of the head_logits weights, as vgg_cli.inference.ood.weights_digest

    def forward(self, views: list[np.ndarray], features: bool = False, calibrated: bool = True) -> dict:
        """Probabilities, logits and (``features``) the input of ``head_logits`` of a uint8 batch (N, S, S, 3),
        each averaged over the ``views`` (``predict.tta_views``)."""
        got = [[self._one(image) for image in view] for view in views]
        logits = [np.stack([g[0] for g in view]) for view in got]
        probs = [self._probabilities(z, calibrated) for z in logits]
        out = {"probabilities": np.mean(probs, axis=0), "logits": np.mean(logits, axis=0)}
        if features:
            out["features"] = np.mean([np.stack([g[1] for g in view]) for view in got], axis=0)
        return out

    def _probabilities(self, logits: np.ndarray, calibrated: bool) -> np.ndarray:
        if calibrated:
            return softmax((logits / np.float32(self.temperature)).astype(np.float32)).astype(np.float32)
        return softmax(logits).astype(np.float32)

    def _one(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, the input of head_logits) of one uint8 image (S, S, 3), in float32 as Keras computes them."""
        x = image.astype(np.float32)[..., ::-1] - IMAGENET_BGR_MEAN
        for step in self.convs:
            x = max_pool(x) if isinstance(step, str) else conv3x3_relu(x, *step)
        if self.pooling == "flatten":
            x = x.reshape(-1)
        else:
            x = x.mean(axis=(0, 1), dtype=np.float32) if self.pooling == "avg" else x.max(axis=(0, 1))
        if self.norm is not None:
            x = x * self.norm[0] + self.norm[1]
        for kernel, bias, activation in self.dense[:-1]:
            x = _activate(x @ kernel + bias, activation)
        kernel, bias, activation = self.dense[-1]
        return _activate(x @ kernel + bias, activation), x


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(x, 0)
    return softmax(x[None])[0].astype(np.float32) if activation == "softmax" else x


def conv3x3_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 3x3 'same' convolution + bias + ReLU of one (H, W, C) float32 image, as one matrix product: the image is
    zero-padded and flattened, so each of the 9 taps is a contiguous slice of rows (rows of the 2 pad columns are
    computed and dropped)."""
    h, w, c = x.shape
    row = w + 2
    padded = np.zeros((h + 3, row, c), np.float32)  # one extra row: the last taps read past the bottom pad row
    padded[1:h + 1, 1:w + 1] = x
    flat = padded.reshape(-1, c)
    n = h * row
    cols = np.empty((n, 9, c), np.float32)
    for k in range(9):
        start = (k // 3) * row + k % 3
        cols[:, k] = flat[start:start + n]
    out = cols.reshape(n, 9 * c) @ kernel.reshape(9 * c, -1)
    out = out.reshape(h, row, -1)[:, :w]
    out += bias
    return np.ascontiguousarray(np.maximum(out, 0, out=out))


def max_pool(x: np.ndarray) -> np.ndarray:
    """2x2 max-pooling, stride 2, 'valid' (an odd last row or column is dropped, as Keras does)."""
    h, w, c = x.shape
    return x[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def choose(engine: str, path: str | Path, images: int, views: int) -> tuple[NumpyModel | None, str]:
    """``--engine``: (the NumPy model, or None for Keras; why). ``numpy`` raises ``Declined`` when it cannot;
    ``auto`` takes NumPy for a few images (``AUTO_MAX_224PX``) and whatever it reproduces, else Keras."""
    if engine == "keras":
        return None, "--engine keras"
    if engine == "auto":
        size = peek_image_size(path)
        work = work_of(images, views, size) if size else float("inf")
        if work > AUTO_MAX_224PX:
            return None, (f"{images} image(s) x {views} view(s) at {size} px: the work of more than "
                          f"{AUTO_MAX_224PX} 224 px images, Keras is faster")
    try:
        return load_numpy_model(path), f"--engine {engine}"
    except Declined as e:
        if engine == "numpy":
            raise
        return None, f"the NumPy engine declined: {e}"


def peek_image_size(path: str | Path) -> int | None:
    """The input size in a ``.keras`` file's config, without reading its weights; None when unreadable."""
    try:
        with zipfile.ZipFile(path) as z:
            shape = json.loads(z.read("config.json"))["config"]["layers"][0]["config"]["batch_shape"]
        return int(shape[1])
    except (OSError, KeyError, ValueError, TypeError, IndexError, zipfile.BadZipFile):
        return None


def peek_class_names(path: str | Path) -> list[str] | None:
    """The class names in a ``.keras`` file's config (its ``LabelNames`` layer), without reading its weights or
    loading a framework; None when unreadable or absent."""
    try:
        with zipfile.ZipFile(path) as z:
            layers = json.loads(z.read("config.json"))["config"]["layers"]
        names = next(layer["config"]["class_names"] for layer in layers if layer.get("class_name") == "LabelNames")
        return [str(c) for c in names]
    except (OSError, KeyError, ValueError, TypeError, StopIteration, zipfile.BadZipFile):
        return None


# ------------------------------------------------------------------------------------------------ reading


def load_numpy_model(path: str | Path) -> NumpyModel:
    """The model in ``path`` (a vgg ``.keras`` file), or ``Declined`` when this engine cannot reproduce it."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            weights = z.read("model.weights.h5")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise Declined(f"cannot read {path} as a .keras file ({e})") from None
    import h5py

    try:
        with h5py.File(io.BytesIO(weights), "r") as h5:
            return _build(config, h5)
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise Declined(f"unexpected model layout ({type(e).__name__}: {e})") from None


def _build(config: dict, h5) -> NumpyModel:
    if config.get("class_name") != "Functional":
        raise Declined(f"not a functional model ({config.get('class_name')})")
    layers = config["config"]["layers"]
    _check_chain(layers)
    shape = layers[0]["config"]["batch_shape"]
    if layers[0]["class_name"] != "InputLayer" or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise Declined(f"input is not one square RGB image ({shape})")
    model = NumpyModel(class_names=[], image_size=int(shape[1]), resize="squash")
    named = _h5_names(layers)
    seen = []
    for layer, group in zip(layers[1:], named[1:]):
        _check_dtype(layer)
        seen.append(_apply(model, layer, h5["layers"][group] if group in h5["layers"] else None))
    wanted = ["preprocess", "backbone", "pool", "logits", "output"]
    if [s for s in seen if s in wanted] != wanted or not model.class_names:
        raise Declined(f"not the layer sequence vgg builds ({', '.join(s for s in seen if s)})")
    return model


def _check_chain(layers: list[dict]) -> None:
    """Each layer is called once, on the previous layer's output: a chain, as vgg builds."""
    for before, layer in zip(layers, layers[1:]):
        nodes = layer.get("inbound_nodes") or []
        if len(nodes) != 1 or len(nodes[0].get("args", ())) != 1:
            raise Declined(f"layer {layer.get('name')} is not called once on one input")
        arg = nodes[0]["args"][0]
        if not isinstance(arg, dict) or arg.get("config", {}).get("keras_history", [None])[0] != before["name"]:
            raise Declined(f"layer {layer.get('name')} does not follow {before.get('name')}: not a chain")


def _h5_names(layers: list[dict]) -> list[str]:
    """The group of each layer in ``model.weights.h5``: its class in snake_case, numbered from the second of a
    class on (``dense``, ``dense_1``; Keras' saving_lib)."""
    used: dict[str, int] = {}
    out = []
    for layer in layers:
        name = "functional" if layer["class_name"] == "Functional" else _snake(layer["class_name"])
        used[name] = used.get(name, -1) + 1
        out.append(name if used[name] == 0 else f"{name}_{used[name]}")
    return out


def _snake(name: str) -> str:

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _check_dtype(layer: dict) -> None:
    dtype = layer["config"].get("dtype", "float32")
    name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if name != "float32":
        raise Declined(f"layer {layer['config'].get('name')} computes in {name} (only float32 is reproduced)")


def _vars(group, count: int) -> list[np.ndarray]:
    got = [np.asarray(group["vars"][str(i)], np.float32) for i in range(count)]
    if len(group["vars"]) != count:
        raise Declined(f"{group.name} holds {len(group['vars'])} variables, not {count}")
    return got


def _apply(model: NumpyModel, layer: dict, group) -> str | None:
    """Add one top-level layer to ``model``; what it was (for the sequence check)."""
    kind, cfg = layer["class_name"], layer["config"]
    if kind in AUGMENTATION or kind == "Dropout":
        return None
    if kind == "VGGPreprocess":
        model.resize = cfg.get("resize", "squash")
        return "preprocess"
    if kind == "Functional":
        model.convs = _backbone(cfg, group)
        return "backbone"
    if kind in POOLS:
        if kind == "Flatten" or not cfg.get("keepdims", False):
            model.pooling = POOLS[kind]
            return "pool"
    elif kind == "BatchNormalization" and model.pooling and model.norm is None and not model.dense:
        return _batch_norm(model, cfg, group)
    elif kind == "Standardize" and model.pooling and model.norm is None and not model.dense:
        mean, inv_std, _ = _vars(group, 3)
        model.norm = (inv_std, (-mean * inv_std).astype(np.float32))
        return "norm"
    elif kind == "Dense":
        return _dense(model, cfg, group)
    elif kind == "TemperatureSoftmax" and model.dense:
        model.temperature = float(_vars(group, 1)[0])
        return "output"
    elif kind == "Activation" and cfg.get("activation") == "softmax" and cfg["name"] == "probabilities":
        raise Declined("a model saved before calibration (a softmax Activation): Keras answers it, bit for bit as "
                       "before (tests/test_old_runs.py)")
    elif kind == "LabelNames":
        model.class_names = [str(c) for c in cfg["class_names"]]
        return None
    raise Declined(f"layer {cfg.get('name')} ({kind}) is not one this engine reproduces")


def _batch_norm(model: NumpyModel, cfg: dict, group) -> str:
    """The head's BatchNormalization in inference: x * gamma / sqrt(variance + epsilon) + (beta - mean * that)."""
    if not (cfg.get("center", True) and cfg.get("scale", True)) or cfg.get("axis", -1) not in (-1, 1, [-1], [1]):
        raise Declined(f"layer {cfg['name']}: center {cfg.get('center')}, scale {cfg.get('scale')}, axis "
                       f"{cfg.get('axis')}")
    gamma, beta, mean, variance = _vars(group, 4)
    scale = (gamma / np.sqrt(variance + np.float32(cfg.get("epsilon", 1e-3)))).astype(np.float32)
    model.norm = (scale, (beta - mean * scale).astype(np.float32))
    return "norm"


def _dense(model: NumpyModel, cfg: dict, group) -> str:
    if cfg.get("activation") not in ACTIVATIONS or not cfg.get("use_bias", True) or cfg.get("quantization_config"):
        raise Declined(f"layer {cfg['name']}: activation {cfg.get('activation')}, use_bias {cfg.get('use_bias')}")
    kernel, bias = _vars(group, 2)
    model.dense.append((kernel, bias, cfg["activation"]))
    if cfg["name"] != LOGITS:
        return "dense"
    model.digest = head_digest((kernel, bias))
    return "logits"


def _backbone(cfg: dict, group) -> list:
    """The VGG conv blocks: each Conv2D exactly 3x3, stride 1, 'same', ReLU, with bias; each pool 2x2 stride 2."""
    if cfg.get("name") not in BACKBONES:
        raise Declined(f"backbone {cfg.get('name')!r} is not vgg16 or vgg19")
    layers = cfg["layers"]
    _check_chain(layers)
    names = _h5_names(layers)
    steps: list = []
    for layer, name in zip(layers[1:], names[1:]):
        _check_dtype(layer)
        c = layer["config"]
        if layer["class_name"] == "Conv2D":
            same = (list(c["kernel_size"]), list(c["strides"]), c["padding"], list(c["dilation_rate"]),
                    c.get("groups", 1), c["activation"], c["use_bias"], c["data_format"])
            if same != ([3, 3], [1, 1], "same", [1, 1], 1, "relu", True, "channels_last") or c.get(
                    "quantization_config"):
                raise Declined(f"conv layer {c['name']} is not a 3x3 same ReLU convolution")
            steps.append(tuple(_vars(group["layers"][name], 2)))
        elif layer["class_name"] == "MaxPooling2D":
            if (list(c["pool_size"]), list(c["strides"]), c["padding"]) != ([2, 2], [2, 2], "valid"):
                raise Declined(f"pool layer {c['name']} is not 2x2 stride 2")
            steps.append("pool")
        else:
            raise Declined(f"backbone layer {c.get('name')} ({layer['class_name']}) is unknown")
    if sum(not isinstance(s, str) for s in steps) != BACKBONES[cfg["name"]]:
        raise Declined(f"{cfg['name']} has {len(steps)} layers, not the full backbone")
    return steps
