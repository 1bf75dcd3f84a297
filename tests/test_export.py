"""vgg export: each format loaded by its own runtime (tf.saved_model.load, the TFLite interpreter, onnxruntime)
agrees with the Keras model on real images, and carries the class names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE, TRAIN_ARGS, run_cli
from vgg_cli.data.images import load_image

TOL = 1e-4  # max |probability difference| from Keras, as vgg export itself checks


def holdout_images(folder: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(folder.rglob("*.png"))
    return files, np.stack([load_image(str(f), SIZE) for f in files]).astype(np.float32)


def keras_probabilities(run: Path, images: np.ndarray) -> np.ndarray:
    from vgg_cli.model.load import load_model

    return np.asarray(load_model(run / "model" / "best.keras").predict_on_batch(images))


@pytest.fixture(scope="module")
def reference(trained_run, colour_holdout):
    files, images = holdout_images(colour_holdout)
    return {"run": trained_run["run_dir"], "files": files, "images": images,
            "probs": keras_probabilities(trained_run["run_dir"], images),
            "classes": json.loads((trained_run["run_dir"] / "classes.json").read_text())}


def export(run: Path, fmt: str, *extra: str) -> dict:
    code, out, err = run_cli(["export", "--run", str(run), "--format", fmt, "--json", *extra])
    assert code == 0, err
    return json.loads(out)


@pytest.mark.slow
def test_saved_model_signature_takes_raw_images_and_returns_names(reference, tmp_path):
    import tensorflow as tf

    report = export(reference["run"], "saved_model", "--out", str(tmp_path / "sm"))
    assert report["path"] == str(tmp_path / "sm") and report["max_abs_diff"] <= TOL and report["top1_agree"]
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    sig = loaded.signatures["serving_default"]
    spec = sig.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, SIZE, SIZE, 3]
    out = sig(images=tf.constant(reference["images"]))
    np.testing.assert_allclose(out["probabilities"].numpy(), reference["probs"], atol=TOL)
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [reference["classes"][i] for i in reference["probs"].argmax(-1)]
    assert sum(n == f.parent.name for n, f in zip(names, reference["files"])) >= 11
    extra = tmp_path / "sm" / "assets.extra"
    assert (extra / "labels.txt").read_text().split() == reference["classes"]
    meta = json.loads((extra / "vgg_export.json").read_text())
    assert "raw RGB pixels 0-255" in meta["input"]["description"] and meta["class_names"] == reference["classes"]
    # every weight stored once (keras-team/keras#23553: tracking the model stored each twice, 112 MiB for 56)
    stored = tf.train.load_checkpoint(str(tmp_path / "sm" / "variables" / "variables")).get_variable_to_shape_map()
    from vgg_cli.model.load import load_model

    values = sum(int(np.prod(shape)) for shape in stored.values())
    params = load_model(reference["run"] / "model" / "best.keras").count_params()
    assert params <= values <= params + 16  # the weights once, and a few scalar states (a seed), not twice


@pytest.mark.slow
def test_tflite_export_runs_in_the_interpreter(reference):
    from vgg_cli.export.formats import _tflite_interpreter

    report = export(reference["run"], "tflite")  # default place: <run>/export/model.tflite
    path = reference["run"] / "export" / "model.tflite"
    assert report["path"] == str(path) and path.stat().st_size > 1_000_000
    labels = reference["run"] / "export" / "model.labels.txt"
    assert labels.read_text().split() == reference["classes"]
    interpreter = _tflite_interpreter(path)
    inp = interpreter.get_input_details()[0]
    assert list(inp["shape"][1:]) == [SIZE, SIZE, 3] and inp["dtype"] == np.float32
    interpreter.resize_tensor_input(inp["index"], list(reference["images"].shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], reference["images"])
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, reference["probs"], atol=TOL)


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_with_class_names_in_its_metadata(reference, tmp_path):
    import onnx
    import onnxruntime as ort

    target = tmp_path / "served" / "colours.onnx"
    report = export(reference["run"], "onnx", "--out", str(target))
    assert report["runtime"] == "onnxruntime" and report["max_abs_diff"] <= TOL
    meta = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert json.loads(meta["class_names"]) == reference["classes"] and "0-255" in meta["input"]
    assert (tmp_path / "served" / "colours.labels.txt").read_text().split() == reference["classes"]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]  # as the SavedModel signature names it
    got = session.run(None, {"images": reference["images"]})[0]
    np.testing.assert_allclose(got, reference["probs"], atol=TOL)
    # exporting again replaces the file in one step (no temporary left behind)
    export(reference["run"], "onnx", "--out", str(target))
    assert sorted(p.name for p in target.parent.iterdir()) == ["colours.labels.txt", "colours.onnx"]


@pytest.mark.slow
def test_mixed_precision_and_augmented_runs_export_as_float32_without_augmentation(tmp_path, colour_data,
                                                                                  colour_holdout):
    import onnx

    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={colour_data}", f"output.dir={runs}", *TRAIN_ARGS,
                              "train.epochs=1", "train.mixed_precision=on", "augment.flip=horizontal",
                              "output.tensorboard=false", "promote.min_accuracy=0"])  # 1 epoch: promotion moot
    assert code == 0, err
    run = Path(out.strip())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"]["precision"] == "mixed_float16"
    report = export(run, "onnx")
    graph = onnx.load(str(run / "export" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not any("augment" in n.name.lower() for n in graph.node)
    _, images = holdout_images(colour_holdout)
    keras_probs = keras_probabilities(run, images)  # float16 compute in Keras, float32 in the export
    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    assert np.array_equal(got.argmax(-1), keras_probs.argmax(-1))
    np.testing.assert_allclose(got, keras_probs, atol=5e-3)  # float16 rounding in the Keras model
    assert report["max_abs_diff"] <= TOL  # against the float32 copy the export was made from


def test_export_errors(trained_run, tmp_path):
    code, _, err = run_cli(["export", "--format", "onnx", "--runs-dir", str(tmp_path / "nothing")])
    assert code == 66 and "no trained run" in err and "Traceback" not in err
    code, _, err = run_cli(["export", "--run", str(trained_run["run_dir"]), "--format", "pmml"])
    assert code == 64 and "pmml" in err
    code, _, err = run_cli(["export", "--run", str(trained_run["run_dir"]), "--model", "x.keras",
                            "--format", "onnx"])
    assert code == 64 and "either --run or --model" in err
