"""Backbone weights: ImageNet through Keras' own download and cache, a local weights file (Keras or legacy h5), a
saved model or run directory, or a He-normal random start; and taking an earlier run's head for a warm start."""

from __future__ import annotations

import difflib
from pathlib import Path

import keras
import numpy as np
from keras import layers

from vgg_cli.errors import ConfigError, NoInputError
from vgg_cli.model.load import class_names_of, load_model
from vgg_cli.runs.rundir import RunDir
from vgg_cli.task.head import LOGITS

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
IMAGENET_PIXEL_STD = 57.4  # mean of the per-channel pixel std on ImageNet (58.4, 57.1, 57.4)


def keras_cache_file(arch: str) -> Path:
    from vgg_cli.platform.keras_fixes import keras_home  # where keras.utils.get_file caches by default

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
    src = next((l for l in source.layers if isinstance(l, keras.Model) and l.name in IMAGENET_NOTOP), None)
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


def check_weights_available(model_cfg) -> None:
    """Fail fast, before a long dataset scan: fetch (or find in Keras' cache) ImageNet weights, or check that a
    weights PATH exists. Loading them into the backbone happens in ``build_model``."""
    if model_cfg.weights == "imagenet":
        imagenet_weights_file(model_cfg.arch)
    elif model_cfg.weights != "none" and not Path(model_cfg.weights).exists():
        raise _weights_not_found(model_cfg.weights)


def _weights_not_found(weights: str) -> NoInputError:

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
        model_file = RunDir(p).model_file()
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


def copy_head(model: keras.Model, run_dir: Path) -> str:
    """Warm start: also take the head of an earlier run. Its hidden dense layers are copied when every one has the
    same shapes; the output layer keeps the rows (kernel columns and bias) of the classes the run knew, matched by
    class NAME (the order may differ), and new classes keep the fresh rows they were built with; a class the run
    knew that is gone is dropped. Returns what was taken, for the run's weights description ("" for nothing)."""

    source = load_model(RunDir(run_dir).model_file())
    ours_names, theirs_names = class_names_of(model), class_names_of(source)
    ours = [l for l in model.layers if l.name.startswith("head_") and l.weights]
    try:
        theirs = [source.get_layer(l.name) for l in ours]
    except ValueError:
        return ""  # another head (pooling, dense layers): nothing fits
    hidden = [(a, b) for a, b in zip(ours, theirs) if a.name != LOGITS]
    if any([w.shape for w in a.get_weights()] != [w.shape for w in b.get_weights()] for a, b in hidden):
        return ""
    logits, source_logits = model.get_layer(LOGITS), source.get_layer(LOGITS)
    kernel, bias = logits.get_weights()
    their_kernel, their_bias = source_logits.get_weights()
    if kernel.shape[0] != their_kernel.shape[0]:
        return ""
    for a, b in hidden:
        a.set_weights(b.get_weights())
    row_of = {c: i for i, c in enumerate(theirs_names)}
    kept = [c for c in ours_names if c in row_of]
    for j, c in enumerate(ours_names):
        if c in row_of:
            kernel[:, j], bias[j] = their_kernel[:, row_of[c]], their_bias[row_of[c]]
    logits.set_weights([kernel, bias])
    if ours_names == theirs_names:
        return " + its head (same classes)"
    new = [c for c in ours_names if c not in row_of]
    gone = [c for c in theirs_names if c not in set(ours_names)]
    return (f" + its head ({len(kept)} of {len(ours_names)} classes' output rows kept by name; new, started "
            f"fresh: {new or 'none'}; dropped: {gone or 'none'})")
