"""Keras backends beyond TensorFlow: the whole CLI on JAX with TensorFlow made unimportable, and the generator
input pipeline that replaces tf.data there (same batches, same order, same weights)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TRAIN_ARGS

# Runs the real entry point as on a machine where TensorFlow is not installed: the path finder does not see it, so
# `import tensorflow` fails, importlib.util.find_spec("tensorflow") is None (what Keras, JAX and torch check) and
# importlib.metadata does not list it.
WITHOUT_TF = """
import importlib.machinery, sys
class WithoutTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'tensorflow':
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    def invalidate_caches(self):
        importlib.machinery.PathFinder.invalidate_caches()
    def find_distributions(self, *args, **kwargs):  # importlib.metadata: installed packages, TensorFlow left out
        return (d for d in importlib.machinery.PathFinder.find_distributions(*args, **kwargs)
                if not (d.metadata['Name'] or '').lower().startswith('tensorflow'))
sys.meta_path[:] = [WithoutTensorFlow() if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from vgg_cli.cli.main import main
main(sys.argv[1:])
"""


def vgg_without_tf(args: list[str], backend: str = "jax", timeout: int = 600,
                   **extra: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}, "KERAS_BACKEND": backend,
           "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", **extra}
    return subprocess.run([sys.executable, "-c", WITHOUT_TF, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_jax_backend_trains_predicts_and_evaluates_without_tensorflow(tmp_path, colour_data, colour_holdout):
    """The whole CLI on JAX, and its persistent compile cache: the second identical run loads instead of
    compiling; a user's JAX_COMPILATION_CACHE_DIR wins."""
    pytest.importorskip("jax")
    runs = tmp_path / "runs"
    # 1. head-only training on cached features, with class weights (they travel as sample weights here)
    first_args = ["train", f"data.train_dir={colour_data}", f"output.dir={runs}", *TRAIN_ARGS,
                  "train.class_weight=balanced", "--json"]
    p = vgg_without_tf(first_args)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    run = Path(out["run"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["versions"]["backend"] == "jax" and "jax" in summary["versions"]
    assert "tensorflow" not in summary["versions"]
    assert summary["input"]["path"] == "features" and summary["device"]["backend"] == "jax"
    assert summary["best"]["val_accuracy"] >= 0.9
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert "TensorFlow is not installed" in p.stderr and not (run / "tensorboard").exists()
    # progress, off a terminal: the feature pass's count and rate, then one line per epoch
    assert "computing frozen-prefix features of" in p.stderr and "features computed in" in p.stderr
    assert all(f"epoch {e}/8 " in p.stderr for e in range(1, 9))
    from PIL import Image

    with Image.open(run / "curves.png") as img:  # a real picture, drawn on JAX too: not blank, two panels wide
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[1] > pixels.shape[0] >= 200 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50

    # 1b. JAX compiles on CPU too: the same run again loads what the first compiled from the persistent cache in
    # output.dir (issue 16)
    p = vgg_without_tf([*first_args, "output.name=again"])
    assert p.returncode == 0, p.stderr[-3000:]
    first = summary["device"]["compile_cache"]
    second = json.loads((runs / "again" / "summary.json").read_text())["device"]["compile_cache"]
    assert first["dir"] == second["dir"] == str(runs / ".cache" / "jax") and first["source"] == "output.dir"
    assert first["max_mb"] == 2048 and first["misses"] > 0 and first["compile_s"] > 0
    # what the first run compiled, the second loads (a program the first compiled twice is one entry)
    assert second["hits"] >= 0.9 * first["misses"] and second["misses"] <= first["misses"] // 10, (first, second)
    assert second["compile_s"] < first["compile_s"] and any((runs / ".cache" / "jax").glob("*-cache"))

    # 2. predict and evaluate read the run back on JAX too
    p = vgg_without_tf(["predict", str(colour_holdout), "--run", str(run), "--format", "json", "--tta", "flip"])
    assert p.returncode == 0, p.stderr[-3000:]
    preds = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(preds) == 12 and sum(r["answer"] == Path(r["path"]).parent.name for r in preds) >= 11
    p = vgg_without_tf(["evaluate", str(colour_holdout), "--run", str(run), "--json", "--gradcam"])
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)
    assert report["accuracy"] >= 11 / 12
    # the galleries with Grad-CAM overlays (JAX gradients) and the report page, beside the evaluation at the end of
    # training (output.report)
    for key in ("misclassified_png", "correct_png", "report_html"):
        assert Path(report["files"][key]).stat().st_size > 1000, key
    assert (run / "report.html").is_file() and (run / "evaluation" / "val" / "report.json").is_file()
    assert summary["promotion"]["new_accuracy_from"] == "evaluation/val: model/best.keras on the images"

    # 3. the whole network every epoch (augmentation on: images through the generator pipeline), with the user's
    # own compile-cache folder: it wins, and vgg leaves it unbounded
    own = tmp_path / "own-cache"
    p = vgg_without_tf(["train", f"data.train_dir={colour_data}", f"output.dir={tmp_path / 'aug-runs'}",
                        *TRAIN_ARGS, "train.epochs=2", "augment.flip=horizontal", "output.name=aug",
                        "promote.min_accuracy=0", "output.report=false",
                        "--json"], JAX_COMPILATION_CACHE_DIR=str(own))  # 2 epochs check the pipeline, not the accuracy
    assert p.returncode == 0, p.stderr[-3000:]
    aug = json.loads((tmp_path / "aug-runs" / "aug" / "summary.json").read_text())
    assert aug["input"]["path"] == "images" and aug["epochs_run"] == 2
    assert np.isfinite(aug["final"]["loss"])
    third = aug["device"]["compile_cache"]
    assert third["dir"] == str(own) and third["source"] == "JAX_COMPILATION_CACHE_DIR" and third["max_mb"] is None
    assert third["misses"] > 0 and any(own.glob("*-cache"))


class _Source:
    """A source whose item i is an array full of i: batches show exactly which items they hold."""
    shape, dtype = (2, 2), np.dtype(np.float32)

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at

    def get(self, idx):
        if self.fail_at is not None and self.fail_at in set(int(i) for i in idx):
            raise OSError(f"cannot read item {self.fail_at}")
        return np.stack([np.full(self.shape, i, np.float32) for i in idx])


def _as_numpy(batches):
    return [tuple(np.asarray(part) for part in batch) for batch in batches]


def test_generator_pipeline_gives_the_tf_data_batches(monkeypatch):
    from vgg_cli.data import pipeline

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1], np.int32)
    ids = list(range(9))  # training items; 9 and 10 are validation items
    weights = {0: 0.5, 1: 2.0, 2: 1.0}
    via_tf = _as_numpy(pipeline.train_batches(_Source(), ids, labels, 4, 7, 1, 4, weights))
    monkeypatch.setattr(pipeline, "uses_tf_data", lambda: False)
    gen = pipeline.train_batches(_Source(), ids, labels, 4, 7, 1, 4, weights)
    via_gen = _as_numpy(gen)
    assert len(via_tf) == len(via_gen) == 3 * 3  # epochs 1..3, ceil(9/4) = 3 near-equal batches each
    for a, b in zip(via_tf, via_gen):
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    first_epoch = np.concatenate([x[:, 0, 0] for x, _, _ in via_gen[:3]]).astype(int)
    np.testing.assert_array_equal(first_epoch, np.asarray(ids)[pipeline.epoch_order(9, 7, 1)])
    for x, y, w in via_gen:
        np.testing.assert_array_equal(y, labels[x[:, 0, 0].astype(int)])
        np.testing.assert_array_equal(w, [weights[int(c)] for c in y])

    val = pipeline.eval_batches(_Source(), [9, 10], labels, 1, repeat=True)
    seen = [int(next(val)[0][0, 0, 0]) for _ in range(5)]
    assert seen == [9, 10, 9, 10, 9]  # Keras reads validation data again every epoch from one iterator
    pipeline.close_batches(val)
    assert not any(t.name == "vgg-batches" and t.is_alive() for t in threading.enumerate())


def test_generator_pipeline_raises_the_sources_error_and_stops_its_thread(monkeypatch):
    from vgg_cli.data import pipeline

    monkeypatch.setattr(pipeline, "uses_tf_data", lambda: False)
    labels = np.zeros(8, np.int32)
    gen = pipeline.train_batches(_Source(fail_at=5), list(range(8)), labels, 2, 0, 0, 1)
    with pytest.raises(OSError, match="cannot read item 5"):
        list(gen)
    stopped = pipeline.train_batches(_Source(), list(range(8)), labels, 2, 0, 0, 100)
    next(stopped)
    pipeline.close_batches(stopped)  # a consumer that stops early (fit interrupted) leaves no thread behind
    assert not any(t.name == "vgg-batches" and t.is_alive() for t in threading.enumerate())
