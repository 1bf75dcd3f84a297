"""The NumPy engine of ``vgg predict`` (``vgg_cli.inference.numpy_engine``): the same probabilities, logits,
features and out-of-distribution answers as Keras to 1e-5, what it declines, and that its path imports neither
TensorFlow nor Keras."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from tests.conftest import vgg

CLASSES = ["a", "b", "c"]


def _save(path: Path, arch: str, pooling: str, dense: list[int], augment: bool, temperature: float,
          norm: str = "none") -> Path:
    """A vgg model with random weights at 32 px, its temperature set (and a head BatchNormalization's statistics
    drawn), saved to ``path``."""
    import keras

    from vgg_cli.model.build import build_model
    from vgg_cli.model.load import set_temperature

    keras.utils.set_random_seed(len(dense) + len(pooling))
    cfg = NS(arch=arch, weights="none", freeze_blocks=[1, 2, 3, 4, 5],
             head=NS(pooling=pooling, norm=norm, dense=dense, dropout=0.25 if dense else 0.0))
    aug = NS(active=True, flip="horizontal", rotation=0.1, zoom=0.1, translation=0, contrast=0.1,
             brightness=0) if augment else None
    model, _ = build_model(cfg, 32, CLASSES, load_weights=True, augment=aug)
    if norm == "batch":  # trained-looking statistics, not the initial identity
        layer, rng = model.get_layer("head_norm"), np.random.default_rng(3)
        gamma, beta, mean, var = (w.shape for w in layer.get_weights())
        layer.set_weights([rng.uniform(0.5, 2, gamma), rng.normal(0, 0.5, beta), rng.normal(0, 1, mean),
                           rng.uniform(0.1, 3, var)])
    if norm == "standard":  # fitted-looking statistics, not the initial identity
        layer, rng = model.get_layer("head_standardize"), np.random.default_rng(4)
        mean, inv_std, _ = (w.shape for w in layer.get_weights())
        layer.set_weights([rng.normal(0, 1, mean), rng.uniform(0.2, 20, inv_std), np.float32(100)])
    assert set_temperature(model, temperature)
    model.save(path)
    return path


@pytest.mark.parametrize("arch, pooling, dense, augment, norm", [
    ("vgg16", "avg", [16], True, "batch"), ("vgg16", "flatten", [], False, "batch"),
    ("vgg19", "max", [8, 8], False, "none"), ("vgg16", "avg", [16], False, "none"),
    ("vgg16", "avg", [16], True, "standard"), ("vgg19", "flatten", [], False, "standard")])
def test_the_numpy_forward_pass_is_keras(tmp_path, arch, pooling, dense, augment, norm):
    import keras

    from vgg_cli.inference.forward import Forward
    from vgg_cli.inference.numpy_engine import load_numpy_model
    from vgg_cli.inference.ood import weights_digest
    from vgg_cli.model.load import load_model

    path = _save(tmp_path / "m.keras", arch, pooling, dense, augment, temperature=2.5, norm=norm)
    model, fast = load_model(path), load_numpy_model(path)
    assert (fast.norm is not None) == (norm != "none")
    assert (fast.image_size, fast.class_names, fast.temperature, fast.pooling) == (32, CLASSES, 2.5, pooling)
    assert fast.digest == weights_digest(model)
    batch = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    views = [batch, batch[:, :, ::-1]]
    keras_forward = Forward(model, features=True)  # one traced program for both settings
    for calibrated in (True, False):
        keras_forward.calibrated = calibrated
        want = keras_forward(views)
        got = fast.forward(views, features=True, calibrated=calibrated)
        for key in ("probabilities", "logits", "features"):
            scale = max(1.0, float(np.abs(want[key]).max()))
            np.testing.assert_allclose(got[key], want[key], atol=1e-5 * scale, rtol=0, err_msg=key)
    keras.backend.clear_session()


def _rewrite_config(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    change(config["config"]["layers"])
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return dst


def test_it_declines_what_it_does_not_reproduce(tmp_path):
    from vgg_cli.inference.numpy_engine import Declined, choose, load_numpy_model

    src = _save(tmp_path / "m.keras", "vgg16", "avg", [16], False, 1.0)

    def mixed(layers):
        next(l for l in layers if l["config"]["name"] == "head_dense1")["config"]["dtype"] = "mixed_float16"

    def unknown(layers):
        next(l for l in layers if l["config"]["name"] == "head_dense1")["class_name"] = "EinsumDense"

    for change, why in ((mixed, "mixed_float16"), (unknown, "EinsumDense")):
        bad = _rewrite_config(src, tmp_path / f"{why}.keras", change)
        with pytest.raises(Declined, match=why):
            load_numpy_model(bad)
        assert choose("auto", bad, 1, 1)[0] is None and why in choose("auto", bad, 1, 1)[1]
        with pytest.raises(Declined):
            choose("numpy", bad, 1, 1)
    assert choose("auto", src, 1, 1)[0] is not None
    assert choose("auto", src, 10_000, 1) == (None, choose("auto", src, 10_000, 1)[1])  # many images: Keras
    assert choose("keras", src, 1, 1)[0] is None
    with pytest.raises(Declined, match="cannot read"):
        load_numpy_model(tmp_path / "missing.keras")


def test_auto_counts_a_small_image_as_more_than_its_pixels():
    """153 images at 64 px took NumPy 60.9 s and Keras 18.7 s (issue 36): a small image is not cheaper in
    proportion to its pixels, so auto takes Keras there; a handful of images stays with NumPy at any size."""
    from vgg_cli.inference.numpy_engine import AUTO_MAX_224PX, work_of

    assert work_of(153, 1, 64) > AUTO_MAX_224PX and work_of(32, 1, 32) > AUTO_MAX_224PX
    assert work_of(16, 1, 224) <= AUTO_MAX_224PX and work_of(20, 1, 64) <= AUTO_MAX_224PX
    assert work_of(8, 6, 64) > AUTO_MAX_224PX  # --tta flip+shift: six views an image


def _imports(args: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``vgg ARGS`` run with ``python -X importtime``: the process and the top-level modules it imported."""
    cmd = [sys.executable, "-X", "importtime", *vgg(*args)[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    names = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    return proc, names


def test_help_imports_no_framework():
    proc, names = _imports(["--help"])
    assert proc.returncode == 0 and names and not names & {"tensorflow", "keras", "jax", "torch"}


def test_predict_answers_as_keras_without_importing_it(trained_run, colour_holdout, tmp_path):
    """A copy of the trained run with temperature 2.5: the fast path's JSON and CSV answers (label, unknown,
    ood_score, predicted, top_k) are Keras' to 1e-5, and it imported neither TensorFlow nor Keras."""
    from vgg_cli.model.load import load_model, set_temperature

    copy = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], copy, symlinks=True)
    model = load_model(copy / "model" / "best.keras")
    assert set_temperature(model, 2.5)
    model.save(copy / "model" / "best.keras")
    from PIL import Image

    stripes = np.zeros((40, 40, 3), np.uint8)
    stripes[:, ::4] = 255
    Image.fromarray(stripes).save(tmp_path / "stripes.png")  # unlike the training images: unknown
    images = sorted(str(p) for p in (colour_holdout / "red").iterdir())[:2] + [str(tmp_path / "stripes.png")]
    args = ["predict", "--run", str(copy), *images, "--top-k", "3"]
    for fmt in ("json", "csv"):
        fast, names = _imports([*args, "--format", fmt, "-v"])
        assert fast.returncode == 0, fast.stderr[-3000:]
        assert not names & {"tensorflow", "keras"} and "engine: numpy" in fast.stderr
        slow = subprocess.run(vgg(*args, "--format", fmt, "--engine", "keras"), capture_output=True, text=True)
        assert slow.returncode == 0, slow.stderr
        if fmt == "json":
            for a, b in zip(*(map(json.loads, p.stdout.splitlines()) for p in (fast, slow)), strict=True):
                _same_answer(a, b)
        else:
            assert fast.stdout.splitlines()[0] == slow.stdout.splitlines()[0]
            header = fast.stdout.splitlines()[0].split(",")
            rows = [[dict(zip(header, r.split(","))) for r in p.stdout.splitlines()[1:]] for p in (fast, slow)]
            exact = [k for k in header if k in ("path", "error", "answer", "unknown") or k.startswith("label_")]
            assert [[r[k] for k in exact] for r in rows[0]] == [[r[k] for k in exact] for r in rows[1]]
            for a, b in zip(*rows):  # probabilities as Keras' to 1e-5; the score as in _same_answer
                assert [float(a[k]) for k in header if k.startswith("probability_")] == pytest.approx(
                    [float(b[k]) for k in header if k.startswith("probability_")], abs=1e-5)
                assert float(a["ood_score"]) == pytest.approx(float(b["ood_score"]), rel=2e-4, abs=1e-5)


def _same_answer(a: dict, b: dict) -> None:
    assert {k: v for k, v in a.items() if k not in ("probability", "top_k", "ood_score")} == {
        k: v for k, v in b.items() if k not in ("probability", "top_k", "ood_score")}
    assert [d["label"] for d in a["top_k"]] == [d["label"] for d in b["top_k"]]
    assert [d["probability"] for d in a["top_k"]] == pytest.approx([d["probability"] for d in b["top_k"]], abs=1e-5)
    assert (a["ood_score"] is None) == (b["ood_score"] is None)
    if a["ood_score"] is not None:
        # the Mahalanobis whitening amplifies the float32 rounding of the features (seen: 3.4e-5 relative)
        assert a["ood_score"] == pytest.approx(b["ood_score"], rel=2e-4, abs=1e-5)


def test_engine_numpy_refuses_gradcam_in_one_line(trained_run, colour_holdout, tmp_path):
    image = str(sorted((colour_holdout / "red").iterdir())[0])
    proc = subprocess.run(vgg("predict", "--run", str(trained_run["run_dir"]), image, "--engine", "numpy",
                              "--gradcam", str(tmp_path / "cams")), capture_output=True, text=True)
    assert proc.returncode == 64 and "--engine numpy cannot compute --gradcam" in proc.stderr
