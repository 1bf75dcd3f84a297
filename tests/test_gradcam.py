"""Grad-CAM, checked where the answer is known: each image's class is decided by a small coloured patch at a random
place on noise, so the evidence for the class is the patch. The heatmap's peak must fall on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

PATCH_COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 230)}


def make_patch_dataset(root: Path, per_class: int, size: int, seed: int) -> dict[str, list[int]]:
    """Noise images with one square of the class's colour (a fifth of the side) at a random place; returns each
    file's patch box (x0, y0, x1, y1) in its own pixels."""
    rng = np.random.default_rng(seed)
    patch = size * 7 // 32
    boxes = {}
    for cls, colour in PATCH_COLOURS.items():
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(70, 186, size=(size, size, 3)).astype(np.uint8)
            x, y = (int(v) for v in rng.integers(0, size - patch + 1, size=2))
            img[y:y + patch, x:x + patch] = colour
            Image.fromarray(img).save(root / cls / f"{i:03d}.png")
            boxes[str(root / cls / f"{i:03d}.png")] = [x, y, x + patch, y + patch]
    return boxes


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("patches")
    make_patch_dataset(base / "train", per_class=30, size=64, seed=1)
    boxes = make_patch_dataset(base / "holdout", per_class=10, size=64, seed=2)
    big = base / "big" / "red.png"  # a holdout image at another resolution (and aspect) than the model's 64 px
    big.parent.mkdir()
    first = sorted((base / "holdout" / "red").iterdir())[0]
    Image.open(first).resize((128, 96), Image.Resampling.NEAREST).save(big)
    code, out, err = run_cli(["train", f"data.train_dir={base / 'train'}", f"output.dir={base / 'runs'}",
                              "data.image_size=64", "model.weights=none", "model.head.dense=[]",
                              "model.head.dropout=0", "model.head.pooling=avg", "train.epochs=80",
                              "train.batch_size=16", "train.optimizer.learning_rate=0.01",
                              "train.early_stopping_patience=0", "output.tensorboard=false", "promote.min_accuracy=0",
                              "model.head.norm=none"])
    assert code == 0, err
    return {"run": Path(out.strip()), "holdout": base / "holdout", "boxes": boxes, "big": big}


def _peak_on_patch(heatmap: np.ndarray, box: list[int], side: int) -> bool:
    """The heatmap's hottest cell overlaps the patch (cells are side/h pixels of the original image)."""
    h, w = heatmap.shape
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cx0, cx1, cy0, cy1 = x * side / w, (x + 1) * side / w, y * side / h, (y + 1) * side / h
    x0, y0, x1, y1 = box
    return cx0 < x1 and x0 < cx1 and cy0 < y1 and y0 < cy1


def _predict_cams(patch_run: dict, out: Path, *extra: str) -> list[dict]:
    code, stdout, err = run_cli(["predict", str(patch_run["holdout"]), "--run", str(patch_run["run"]),
                                 "--format", "json", "--gradcam", str(out), *extra])
    assert code == 0, err
    assert f"gradcam: 20 overlay(s) and heatmap(s) in {out}" in err
    return [json.loads(line) for line in stdout.splitlines()]


def test_heatmap_peaks_on_the_patch_that_decides_the_class(patch_run, tmp_path):
    rows = _predict_cams(patch_run, tmp_path / "cams", "--cam-layer", "block3_conv3")
    correct = [r for r in rows if r["answer"] == Path(r["path"]).parent.name]
    assert len(correct) >= 16, [r["answer"] for r in rows]  # the model learned the task
    hits = 0
    for r in correct:
        cam = r["gradcam"]
        heatmap = np.load(cam["heatmap"])
        assert heatmap.shape == (16, 16) and heatmap.dtype == np.float32 and heatmap.max() == 1.0
        assert heatmap.min() >= 0.0 and cam["class"] == r["answer"] and cam["layer"] == "block3_conv3"
        assert cam["positive_evidence"] is True
        hits += _peak_on_patch(heatmap, patch_run["boxes"][r["path"]], 64)
        assert Image.open(cam["overlay"]).size == (64, 64)
    assert hits >= 0.8 * len(correct), f"peak on the patch for {hits} of {len(correct)} correctly classified images"

    # the overlay is the image, tinted by the heatmap: hot (red) where the map peaks, the image elsewhere
    r = correct[0]
    overlay = np.asarray(Image.open(r["gradcam"]["overlay"]), dtype=np.float64)
    original = np.asarray(Image.open(r["path"]).convert("RGB"), dtype=np.float64)
    assert 0.05 < np.abs(overlay - original).mean() / 255 < 0.5

    # an image of another size: the overlay has the image's own resolution, the heatmap the layer's
    code, out, err = run_cli(["predict", str(patch_run["big"]), "--run", str(patch_run["run"]), "--format", "json",
                              "--gradcam", str(tmp_path / "big")])
    assert code == 0, err
    cam = json.loads(out)["gradcam"]
    overlay = Image.open(cam["overlay"])
    assert overlay.size == (128, 96) and overlay.mode == "RGB" and np.load(cam["heatmap"]).shape == (4, 4)


def test_explaining_another_class_and_bad_cam_options(patch_run, tmp_path):
    red = sorted((patch_run["holdout"] / "red").iterdir())[0]
    code, out, err = run_cli(["predict", str(red), "--run", str(patch_run["run"]), "--format", "json",
                              "--gradcam", str(tmp_path / "c"), "--cam-class", "blue"])
    assert code == 0, err
    row = json.loads(out)
    assert row["gradcam"]["class"] == "blue" and row["gradcam"]["layer"] == "block5_conv3"  # the default layer
    assert row["gradcam"]["probability"] == pytest.approx(1 - row["probability"], abs=1e-5)
    code, _, err = run_cli(["predict", str(red), "--run", str(patch_run["run"]), "--gradcam", str(tmp_path / "d"),
                            "--cam-class", "green"])
    assert code == 64 and "--cam-class 'green' is not a class of this model; its classes: blue, red" in err
    code, _, err = run_cli(["predict", str(red), "--run", str(patch_run["run"]), "--gradcam", str(tmp_path / "e"),
                            "--cam-layer", "block9_conv1"])
    assert code == 64 and "'block9_conv1' is not a layer of the vgg16 backbone" in err
    code, _, err = run_cli(["predict", str(red), "--run", str(patch_run["run"]), "--cam-class", "red"])
    assert code == 64 and "--cam-class and --cam-layer go with --gradcam DIR" in err


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_heatmaps_on_jax_and_torch(patch_run, tmp_path, backend):
    pytest.importorskip(backend)
    tf_rows = _predict_cams(patch_run, tmp_path / "tf")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(Path(__file__).parents[1])}
    p = subprocess.run([sys.executable, "-m", "vgg_cli", "predict", str(patch_run["holdout"]), "--run",
                        str(patch_run["run"]), "--format", "json", "--gradcam", str(tmp_path / backend)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    other = {r["path"]: r for r in map(json.loads, p.stdout.splitlines())}
    for r in tf_rows:
        o = other[r["path"]]["gradcam"]
        assert o["class"] == r["gradcam"]["class"]
        np.testing.assert_allclose(np.load(o["heatmap"]), np.load(r["gradcam"]["heatmap"]), atol=1e-3)


def test_an_empty_map_is_said(tmp_path):
    """A head whose every channel lowers the answered class's score: its map has no positive part, and predict says
    so (stderr, and positive_evidence false in the JSON) instead of writing a blank overlay silently."""
    import keras

    from vgg_cli.model.build import build_model

    cfg = SimpleNamespace(arch="vgg16", weights="none", freeze_blocks=[1, 2, 3, 4, 5],
                          head=SimpleNamespace(pooling="avg", norm="none", dense=[], dropout=0.0))
    model, _ = build_model(cfg, 32, ["a", "b"])
    logits = model.get_layer("head_logits")
    kernel, _ = logits.get_weights()
    logits.set_weights([-np.abs(kernel) - 0.01, np.array([50.0, 0.0], np.float32)])  # "a" wins, every channel against it
    model.save(tmp_path / "m.keras")
    keras.backend.clear_session()
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    code, out, err = run_cli(["predict", str(image), "--model", str(tmp_path / "m.keras"), "--format", "json",
                              "--gradcam", str(tmp_path / "cams")])
    assert code == 0, err
    row = json.loads(out)
    assert row["answer"] == "a" and row["gradcam"]["positive_evidence"] is False
    assert np.load(row["gradcam"]["heatmap"]).max() == 0.0
    assert "gradcam: 1 map(s) are empty: no region of the image raises its class's score" in err
