"""``vgg export``: a trained model in a serving format, checked in its own runtime against Keras.

Formats (each written atomically: built in a temporary path next to the target, then renamed into place):

- ``saved_model``: a TensorFlow SavedModel for TF Serving. Its ``serving_default`` signature takes
  ``images``: float32 ``[N, S, S, 3]`` raw RGB pixels 0-255 (VGG preprocessing is inside; each image made S x S
  the way the run's ``data.resize`` says, which the description names: ``input_doc``) and returns
  ``probabilities`` ``[N, K]``, ``class_index`` ``[N]`` and ``class_name`` ``[N]`` (strings). The class names
  and this description are also in ``assets.extra/labels.txt`` and ``assets.extra/vgg_export.json``.
- ``tflite``: a TFLite (LiteRT) flat buffer with the same input and the probabilities as output, plus
  ``<name>.labels.txt`` beside it (one class name per line, in output order).
- ``onnx``: an ONNX model (Keras' exporter, tf2onnx on the TensorFlow backend) with the same input and output;
  the class names are in its metadata (``class_names``, a JSON list) and in ``<name>.labels.txt`` beside it.

Every export is loaded back in its runtime (``tf.saved_model.load``, the TFLite interpreter, onnxruntime) and its
probabilities compared with the Keras model's on probe images; a difference above ``TOLERANCE`` is an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from vgg_cli.errors import UnavailableError, VggError
from vgg_cli.export.scored import SCORE_TOLERANCE, check_scores, describe, expected_scores, with_score
from vgg_cli.fsio import atomic_tree, write_text
from vgg_cli.platform.backend import native_quiet

log = logging.getLogger("vgg")

FORMATS = ("saved_model", "tflite", "onnx")
DEFAULT_NAMES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
TOLERANCE = 1e-4  # max |probability difference| between the export and Keras on the probe images
INPUT_DOC = "float32 [N, {s}, {s}, 3]: raw RGB pixels 0-255, resized to {s}x{s}; VGG preprocessing is inside"
# What the caller must do to an image before feeding it, per data.resize (the model records it: resize_of).
RESIZE_DOC = {
    "squash": "resize both sides to {s}x{s} (bilinear; the aspect ratio is not kept)",
    "crop": "resize so the short side is {s} (bilinear, aspect ratio kept), then take the centre {s}x{s} square",
    "pad": "resize so the long side is {s} (bilinear, aspect ratio kept), then pad to {s}x{s} with black (0) bars, "
           "the image centred",
}


def input_doc(size: int, resize: str = "squash") -> str:
    """The input's description; squash's is the one exports had before data.resize existed."""
    if resize == "squash":
        return INPUT_DOC.format(s=size)
    return (f"float32 [N, {size}, {size}, 3]: raw RGB pixels 0-255 of each image made {size}x{size} with "
            f"data.resize={resize}: {RESIZE_DOC[resize].format(s=size)}; VGG preprocessing is inside")


class ExportMismatch(VggError):
    """The exported model does not reproduce the Keras model: a bug (exit 70)."""


# ------------------------------------------------------------------------------------------------ the model


def _float32_config(obj):
    """A serialized Keras object with every mixed-precision dtype policy replaced by float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "DTypePolicy" and str(obj.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: ("float32" if k == "dtype" and isinstance(v, str) and v.startswith("mixed_") else _float32_config(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    return obj


def inference_model(model):
    """The model as served: float32 throughout (a mixed-precision run computes in float16; exporters want
    float32) and without augmentation layers (identities at inference, but extra ops for converters). Same
    weights, same outputs."""
    import keras

    config = keras.saving.serialize_keras_object(model)
    fixed = _float32_config(config)
    has_aug = any(layer.name.startswith("augment_") for layer in model.layers)
    if fixed == config and not has_aug:
        return model
    clone = keras.saving.deserialize_keras_object(fixed, safe_mode=True)
    clone.set_weights(model.get_weights())
    if not has_aug:
        return clone
    inputs = keras.Input(shape=clone.input_shape[1:], name="image")
    x = inputs
    for layer in clone.layers[1:]:  # a chain: image -> [augment_*] -> preprocess -> backbone -> head -> labels
        if not layer.name.startswith("augment_"):
            x = layer(x)
    return keras.Model(inputs, x, name=clone.name)


def probe_images(size: int, n: int = 6, seed: int = 0) -> np.ndarray:
    """Deterministic float32 0-255 images for the agreement check: smooth gradients and noise, not constants."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    out = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    out[: n // 2] = 0.5 * out[: n // 2] + 0.5 * ramp[None, :, None, None]
    return out


# ------------------------------------------------------------------------------------------------ writers


def _need_tensorflow(fmt: str):
    try:
        import tensorflow as tf
    except ImportError:
        raise UnavailableError(f"--format {fmt} needs TensorFlow, which is not installed; pip install tensorflow "
                               f"(or export with --format onnx)") from None
    return tf


def _write_saved_model(model, path: Path, classes: list[str], size: int, resize: str = "squash", ood=None) -> None:
    import keras

    tf = _need_tensorflow("saved_model")
    names = tf.constant(classes)

    def serve(images):
        if ood is None:
            probabilities = model(images, training=False)
        else:  # model: with_score's, two outputs
            probabilities, score = model(images, training=False)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        out = {"probabilities": probabilities, "class_index": index, "class_name": tf.gather(names, index)}
        if ood is not None:
            out.update(ood_score=score, unknown=score > ood.threshold)
        return out

    archive = keras.export.ExportArchive()
    # not archive.track(model): it stores every weight a second time (keras-team/keras#23553); the endpoint
    # captures the variables it uses, which is all TF Serving needs
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    archive.write_out(str(path), verbose=False)
    extra = path / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "labels.txt").write_text("".join(c + "\n" for c in classes), encoding="utf-8")
    description = _description("saved_model", classes, size, resize, ood)
    (extra / "vgg_export.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")


def _write_tflite(model, path: Path) -> None:
    _need_tensorflow("tflite")
    with native_quiet("the TFLite converter"):
        model.export(str(path), format="litert", verbose=False)


def _write_onnx(model, path: Path, classes: list[str], resize: str = "squash", ood=None) -> None:
    try:
        import onnx
    except ImportError:
        raise UnavailableError("--format onnx needs the onnx and tf2onnx packages: pip install 'vgg-cli[export]' "
                               "(in a checkout: pip install '.[export]')") \
            from None
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), native_quiet("tf2onnx"):
        model.export(str(path), format="onnx", verbose=False)  # (tf2onnx prints its progress, and a FutureWarning)
    proto = onnx.load(str(path))
    _rename_input(proto, "images")  # the SavedModel signature's name, and the one the report gives
    del proto.metadata_props[:]
    size = int(model.input_shape[1])
    extra = () if ood is None else (("ood_method", ood.method), ("ood_threshold", repr(float(ood.threshold))),
                                    ("ood_acceptance", repr(float(ood.acceptance))))
    if ood is not None:
        _rename_outputs(proto, ["probabilities", "ood_score"])
    for key, value in (("class_names", json.dumps(classes, ensure_ascii=False)), ("input", input_doc(size, resize)),
                       ("resize", resize), ("image_size", str(size)), ("producer", "vgg export"), *extra):
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _rename_input(proto, name: str) -> None:
    old = proto.graph.input[0].name
    if old == name:
        return
    proto.graph.input[0].name = name
    for node in proto.graph.node:
        for i, value in enumerate(node.input):
            if value == old:
                node.input[i] = name


def _rename_outputs(proto, names: list[str]) -> None:
    for out, name in zip(proto.graph.output, names):
        old, out.name = out.name, name
        for node in proto.graph.node:
            for i, value in enumerate(node.output):
                if value == old:
                    node.output[i] = name


def _description(fmt: str, classes: list[str], size: int, resize: str = "squash", ood=None) -> dict:

    more = {} if ood is None else {"ood_score": describe(ood)}
    if ood is not None and fmt == "saved_model":
        more["unknown"] = f"bool [N]: ood_score > {ood.threshold:.6g}"
    return {"format": fmt, "input": {"name": "images", "dtype": "float32", "shape": [None, size, size, 3],
                                     "description": input_doc(size, resize), "resize": resize,
                                     "resize_how": RESIZE_DOC[resize].format(s=size)},
            "output": {"probabilities": f"float32 [N, {len(classes)}] in the order of class_names", **more},
            "class_names": classes, "image_size": size, "resize": resize}


# ------------------------------------------------------------------------------------------------ runtimes


def run_saved_model(path: Path, images: np.ndarray, output: str = "probabilities") -> np.ndarray:
    tf = _need_tensorflow("saved_model")
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    return np.asarray(out[output])


def _tflite_interpreter(path: Path):
    try:  # LiteRT's own package, where installed; TensorFlow's copy of the same interpreter otherwise
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tf = _need_tensorflow("tflite")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice points at ai_edge_litert
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
    with native_quiet("the TFLite interpreter"):  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = _tflite_interpreter(path)
        inp = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(images.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images.astype(inp["dtype"]))
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def run_onnx(path: Path, images: np.ndarray, output: str | None = None) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UnavailableError("checking the ONNX export needs onnxruntime: pip install 'vgg-cli[export]' (in a "
                               "checkout: pip install '.[export]')") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if output is not None:
        return np.asarray(session.run([output], {session.get_inputs()[0].name: images})[0])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])


RUNTIMES = {"saved_model": ("tf.saved_model.load", run_saved_model), "tflite": ("TFLite interpreter", run_tflite),
            "onnx": ("onnxruntime", run_onnx)}


# ------------------------------------------------------------------------------------------------ export


def write_labels(out: Path, classes: list[str]) -> Path:
    """``<name>.labels.txt`` beside a single-file export: one class name per line, in output order."""

    labels = out.with_name(out.stem + ".labels.txt") if out.suffix else out.parent / "labels.txt"
    write_text(labels, "".join(c + "\n" for c in classes))
    return labels


def export_model(model, fmt: str, out: Path, ood=None) -> dict:
    """Write ``model`` (a vgg .keras model) as ``fmt`` to ``out``, check it in its runtime, return a report.
    ``ood`` (the run's ``OODStats``): SavedModel and ONNX also output ``ood_score`` (``vgg_cli.export.scored``)."""
    from vgg_cli.model.load import class_names_of, image_size_of, resize_of

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    served = inference_model(model)
    classes, size, resize = class_names_of(served), image_size_of(served), resize_of(served)
    images = probe_images(size)
    expected = np.asarray(served.predict_on_batch(images), np.float32)
    ood = ood if fmt in ("saved_model", "onnx") else None
    scored = None if ood is None else with_score(served, ood)
    if scored is not None:
        scored.predict_on_batch(images[:1])  # Keras' ONNX exporter wants a model that was called once
    with atomic_tree(out) as tmp:
        if fmt == "saved_model":
            _write_saved_model(scored or served, tmp, classes, size, resize, ood)
        elif fmt == "tflite":
            _write_tflite(served, tmp)
        else:
            _write_onnx(scored or served, tmp, classes, resize, ood)
        runtime, run = RUNTIMES[fmt]
        got = run(tmp, images)  # checked before it replaces an earlier export
        score_diff = None if ood is None else check_scores(run(tmp, images, "ood_score"),
                                                           expected_scores(served, ood, images))
        if score_diff is not None and score_diff > SCORE_TOLERANCE:
            raise ExportMismatch(f"the {fmt} export's ood_score does not match vgg's in {runtime}: relative "
                                 f"difference {score_diff:.3g} (tolerance {SCORE_TOLERANCE:g}); nothing was "
                                 f"written. Please report this with the run's config.yaml")
        diff = float(np.max(np.abs(got - expected)))
        agree = bool(np.array_equal(got.argmax(-1), expected.argmax(-1)))
        if got.shape != expected.shape or diff > TOLERANCE or not agree:
            raise ExportMismatch(f"the {fmt} export does not match the Keras model in {runtime}: max |difference| "
                                 f"{diff:.3g} (tolerance {TOLERANCE:g}), same top-1 on {agree}; nothing was "
                                 f"written. Please report this with the run's config.yaml")
    labels = write_labels(out, classes) if fmt != "saved_model" else out / "assets.extra" / "labels.txt"
    files = sorted(p for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file())
    return {"format": fmt, "path": str(out), "labels": str(labels),
            "runtime": runtime, "max_abs_diff": diff, "tolerance": TOLERANCE, "probe_images": len(images),
            "top1_agree": agree, "bytes": sum(p.stat().st_size for p in files), "ood_score_diff": score_diff,
            **_description(fmt, classes, size, resize, ood)}
