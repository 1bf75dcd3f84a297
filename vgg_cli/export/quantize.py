"""INT8 exports (``vgg export --int8``): a quarter of the size, calibrated on the run's own training images, and
written only when the validation split says they are still good enough.

- ``tflite``: TFLite full-integer quantization (every op in int8: ``TFLITE_BUILTINS_INT8``; weights per channel).
  The interface stays that of the float export: float32 raw pixels in, float32 probabilities out, with
  quantize/dequantize at the two ends, so a caller switches files, not code.
- ``onnx``: onnxruntime's static quantization (QDQ, int8 weights per channel, uint8 activations) of the float
  ONNX export; the same interface.

Calibration images: up to ``--calibration-images`` of the run's training split (a fixed sample, seed 0), decoded
exactly as training decoded them (the model's image size and ``data.resize`` mode). The check: the float Keras model
and the INT8 model in its runtime score the run's validation split; when the INT8 accuracy is lower by more than
``--max-accuracy-drop``, nothing is written and the command exits 3. The report gives both accuracies, their top-1
agreement, the sizes and the CPU latency of one image (median of repeated runs) for the float and the INT8 export of
the same format.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np

from vgg_cli.data.images import BadImage, load_image
from vgg_cli.data.index import index_from_manifest
from vgg_cli.errors import EXIT_NOT_PROMOTED, NoInputError, UnavailableError, UsageError, VggError
from vgg_cli.export.formats import (
    RUNTIMES,
    _need_tensorflow,
    _tflite_interpreter,
    _write_onnx,
    _write_tflite,
    inference_model,
    input_doc,
    write_labels,
)
from vgg_cli.fsio import atomic_tree
from vgg_cli.platform.backend import native_quiet
from vgg_cli.progress import Progress
from vgg_cli.runs.rundir import RunDir

INT8_FORMATS = ("tflite", "onnx")
MAX_ACCURACY_DROP = 0.01  # default --max-accuracy-drop
CALIBRATION_IMAGES = 100  # default --calibration-images
LATENCY_RUNS = 20


class AccuracyDropError(VggError):
    """The INT8 model lost more validation accuracy than allowed; nothing was written (exit 3, like a run that
    trained but was not promoted: the work was done, the result is not good enough to replace anything)."""

    exit_code = EXIT_NOT_PROMOTED

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}  # the comparison, for --json (printed on refusal too)


def run_images(run_dir: Path, split: str, size: int, limit: int | None = None,
               resize: str = "squash") -> tuple[np.ndarray, list[str]]:
    """The run's images of ``split`` (train/val) from its data.json as float32 0-255 (N, S, S, 3), made square as
    ``resize`` says (the model's: ``resize_of``), with their class names; ``limit``: a fixed random sample of that
    many."""

    index = index_from_manifest(RunDir(run_dir).read_manifest())
    files, labels = index.split(split)
    pairs = list(zip(files, labels))
    if limit is not None and len(pairs) > limit:
        pairs = random.Random(0).sample(pairs, limit)
    images, truth = [], []
    for f, label in pairs:
        try:
            images.append(load_image(f, size, resize))
        except BadImage:
            continue  # a file gone bad since training: left out
        truth.append(index.classes[label])
    if not images:
        raise NoInputError(f"run {run_dir.name!r} has no readable {split} images for the INT8 export; it needs "
                           f"its training images (calibration) and validation split (check)")
    return np.stack(images).astype(np.float32), truth


def _representative(calibration: np.ndarray):
    def gen():
        with Progress(len(calibration), "INT8 calibration") as progress:
            for image in calibration:
                yield [image[None]]
                progress.update(1)
    return gen


def write_tflite_int8(served, path: Path, calibration: np.ndarray) -> None:
    """Full-integer TFLite, converted from a SavedModel (the converter freezes its variables there)."""
    import keras
    import tensorflow as tf

    size = served.input_shape[1]
    with tempfile.TemporaryDirectory(prefix="vgg-int8-sm-") as saved:
        archive = keras.export.ExportArchive()
        archive.add_endpoint("serve", lambda images: served(images, training=False),
                             input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serve"])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with native_quiet("the TFLite converter"):  # "fully_quantize: 0, inference_type: 6, ..."
            Path(path).write_bytes(converter.convert())


def write_onnx_int8(float_onnx: Path, path: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.items = iter([{name: image[None]} for image in calibration])

        def get_next(self):
            return next(self.items, None)

    import onnx

    name = onnx.load(str(float_onnx), load_external_data=False).graph.input[0].name
    prepared = path.with_name(path.stem + ".prep.onnx")
    quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(path), Reader(name), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    prepared.unlink()
    quantized, original = onnx.load(str(path)), onnx.load(str(float_onnx))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)  # class_names travel as in the float export
    onnx.save(quantized, str(path))


def predictor(fmt: str, path: Path):
    """A function images -> probabilities over one loaded runtime session (loaded once, then reused), one image
    per call inside it: the shape the INT8 models were calibrated for."""
    if fmt == "tflite":
        with native_quiet("the TFLite interpreter"):
            interpreter = _tflite_interpreter(path)
            interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def one(image):
            interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
            interpreter.invoke()
            return np.asarray(interpreter.get_tensor(out["index"]))[0]
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def one(image):
            return np.asarray(session.run(None, {name: image[None]})[0])[0]

    def run(images):
        out = []
        with Progress(len(images), f"checking the {fmt} model") as progress:
            for image in images:
                out.append(one(image))
                progress.update(1)
        return np.stack(out)

    return run


def latency_ms(predict, image: np.ndarray) -> float:
    """Median wall time of one image through a loaded runtime (after one warm-up run), milliseconds."""
    predict(image[None])
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        predict(image[None])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def check_int8(fmt: str, float_path: Path, int8_path: Path, served, images: np.ndarray, truth: list[str],
               classes: list[str], max_drop: float) -> dict:
    """Score the float Keras model and the INT8 export on the validation images; refuse a drop above
    ``max_drop``. Returns the comparison for the report."""

    runtime = RUNTIMES[fmt][0]
    expected = np.concatenate([np.asarray(served.predict_on_batch(images[i:i + 32]), np.float32)
                               for i in range(0, len(images), 32)])
    int8, float_ = predictor(fmt, int8_path), predictor(fmt, float_path)
    got = int8(images)
    index = np.asarray([classes.index(t) for t in truth])
    acc_float = float(np.mean(expected.argmax(-1) == index))
    acc_int8 = float(np.mean(got.argmax(-1) == index))
    result = {"runtime": runtime, "validation_images": len(images), "accuracy_float": acc_float,
              "accuracy_int8": acc_int8, "accuracy_drop": acc_float - acc_int8, "max_accuracy_drop": max_drop,
              "top1_agreement": float(np.mean(expected.argmax(-1) == got.argmax(-1))),
              "max_abs_diff": float(np.max(np.abs(got - expected))),
              "bytes_float": _size(float_path), "bytes_int8": _size(int8_path),
              "latency_ms_float": latency_ms(float_, images[0]), "latency_ms_int8": latency_ms(int8, images[0])}
    if result["accuracy_drop"] > max_drop + 1e-9:
        raise AccuracyDropError(
            f"the INT8 {fmt} export scores {acc_int8:.4f} on the {len(images)} validation images against the float "
            f"model's {acc_float:.4f}: a drop of {acc_float - acc_int8:.4f} > --max-accuracy-drop {max_drop:g}; "
            f"nothing was written (export the float model, or allow a larger drop)",
            {"format": fmt, "int8": True, "written": False, **result})
    return result


def _need_onnxruntime() -> None:
    """onnxruntime quantizes and checks the INT8 ONNX model: missing, one line and exit 69, not a traceback."""
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        raise UnavailableError("--int8 --format onnx needs onnxruntime (and onnx, tf2onnx): pip install "
                               "'vgg-cli[export]' (in a checkout: pip install '.[export]')") from None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())


def export_int8(model, fmt: str, out: Path, run_dir: Path | None, max_drop: float = MAX_ACCURACY_DROP,
                n_calibration: int = CALIBRATION_IMAGES) -> dict:
    """Write ``model`` as an INT8 ``fmt`` (tflite, onnx) to ``out`` if it passes the validation check."""
    from vgg_cli.model.load import class_names_of, image_size_of, resize_of

    if fmt not in INT8_FORMATS:
        raise UsageError(f"--int8 goes with --format tflite or onnx, not {fmt}")
    if run_dir is None:
        raise UsageError("--int8 needs a run (--run), not --model: its training images calibrate the INT8 model "
                         "and its validation split checks it")
    if fmt == "tflite":
        _need_tensorflow(fmt)
    else:
        _need_onnxruntime()
    served = inference_model(model)
    classes, size, resize = class_names_of(served), image_size_of(served), resize_of(served)
    calibration, _ = run_images(run_dir, "train", size, n_calibration, resize)
    images, truth = run_images(run_dir, "val", size, resize=resize)
    served.predict_on_batch(images[:1])  # Keras' ONNX exporter wants a model that was called once
    with tempfile.TemporaryDirectory(prefix="vgg-int8-", dir=out.parent if out.parent.is_dir() else None) as scratch:
        float_path = Path(scratch) / f"float.{fmt}"
        (_write_tflite(served, float_path) if fmt == "tflite" else _write_onnx(served, float_path, classes, resize))
        with atomic_tree(out) as tmp:
            if fmt == "tflite":
                write_tflite_int8(served, tmp, calibration)
            else:
                write_onnx_int8(float_path, tmp, calibration)
            check = check_int8(fmt, float_path, tmp, served, images, truth, classes, max_drop)

    labels = write_labels(out, classes)
    return {"format": fmt, "int8": True, "path": str(out), "labels": str(labels), "class_names": classes,
            "image_size": size, "resize": resize, "input_description": input_doc(size, resize),
            "calibration_images": len(calibration), "bytes": check["bytes_int8"], **check}
