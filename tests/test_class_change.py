"""Classes that come and go (issue 26, item 4): a warm start keeps the head's rows of the classes it knows, by name,
and starts new rows for new classes; promotion compares the two models on the classes both know and reports the new
classes' own accuracy; promote.allow_class_change=true promotes without a comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TRAIN_ARGS, colour_image, run_cli
from tests.test_drift import copy_runs, moved_to

NIGHT = [*TRAIN_ARGS, "train.epochs=3", "output.report=false", "output.tensorboard=false"]
BAD = ["train.epochs=1", "train.optimizer.learning_rate=1e-7", "model.weights=none"]  # learns nothing


def _with_purple(data: Path, to: Path) -> Path:
    data = Path(shutil.copytree(data, to))
    rng = np.random.default_rng(4)
    (data / "purple").mkdir()
    for i in range(10):
        colour_image((150, 40, 200), rng).save(data / "purple" / f"p{i:02d}.png")
    return data


@pytest.mark.slow
def test_warm_start_keeps_known_rows_by_name_and_starts_new_ones(trained_run):
    import keras

    from vgg_cli.config.schema import load_config
    from vgg_cli.model.build import build_model
    from vgg_cli.model.load import load_model
    from vgg_cli.model.weights import copy_head
    from vgg_cli.task.head import LOGITS

    champion = trained_run["run_dir"]
    cfg = load_config(None, TRAIN_ARGS)
    old = load_model(champion / "model" / "best.keras")
    old_classes = json.loads((champion / "classes.json").read_text())
    classes = ["purple", *reversed(old_classes)]  # another order, and a new class first
    keras.utils.set_random_seed(1)
    model, _ = build_model(cfg.model, cfg.data.image_size, classes)
    fresh_kernel, fresh_bias = model.get_layer(LOGITS).get_weights()
    said = copy_head(model, champion)
    assert "3 of 4 classes' output rows kept by name" in said and "['purple']" in said
    kernel, bias = model.get_layer(LOGITS).get_weights()
    their_kernel, their_bias = old.get_layer(LOGITS).get_weights()
    for j, c in enumerate(classes):
        if c == "purple":  # a fresh row, as the new layer drew it
            np.testing.assert_array_equal(kernel[:, j], fresh_kernel[:, j])
            assert bias[j] == fresh_bias[j] == 0
        else:
            np.testing.assert_array_equal(kernel[:, j], their_kernel[:, old_classes.index(c)])
            assert bias[j] == their_bias[old_classes.index(c)]
    for a, b in zip(model.get_layer("head_dense1").get_weights(), old.get_layer("head_dense1").get_weights()):
        np.testing.assert_array_equal(a, b)
    other = load_config(None, [*TRAIN_ARGS, "model.head.dense=[16]"])
    model, _ = build_model(other.model, cfg.data.image_size, classes)
    assert copy_head(model, champion) == ""  # another head shape: nothing taken


def _night(data: Path, runs: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "--json", *NIGHT, *extra])
    return code, json.loads(out), err


@pytest.mark.slow
def test_a_night_adding_a_class_is_compared_on_the_classes_both_know(trained_run, tmp_path):
    first = trained_run["run_dir"].name
    data = _with_purple(trained_run["data"], tmp_path / "photos")
    runs = {}
    for name in ("warm", "bad", "allowed"):
        runs[name] = copy_runs(trained_run["runs"], tmp_path / name)
        moved_to(runs[name] / first, data)
    code, result, err = _night(data, runs["warm"], "model.weights=production")
    p = result["promotion"]
    summary = json.loads((Path(result["run"]) / "summary.json").read_text())
    assert "3 of 4 classes' output rows kept by name" in summary["weights"], err
    change = p["class_change"]
    assert change["added"] == ["purple"] and change["shared"] == ["blue", "green", "red"]
    manifest = json.loads((Path(result["run"]) / "data.json").read_text())
    shared_val = [f for f in manifest["files"] if f["split"] == "val" and f["class"] != "purple"]
    assert change["compared_on"] == {"images": len(shared_val), "classes": 3}
    assert set(change["new_classes_accuracy"]) == {"purple"}
    at_least = p["new_accuracy_shared"] >= p["production_accuracy"] and p["new_accuracy"] > p["min_accuracy"]
    assert p["promoted"] is at_least and code == (0 if at_least else 3)
    assert summary["drift"]["new_classes"] == {"purple": 10}  # a new class is not drift

    code, result, _ = _night(data, runs["bad"], *BAD)
    p = result["promotion"]
    assert code == 3 and not p["promoted"] and p["new_accuracy_shared"] < p["production_accuracy"]
    assert "of the 3 classes both know" in p["reason"] and "promote.allow_class_change=true" in p["reason"]
    assert (runs["bad"] / "production").resolve().name == first

    code, result, _ = _night(data, runs["allowed"], *BAD, "promote.min_accuracy=0",
                             "promote.allow_class_change=true")
    p = result["promotion"]
    assert code == 0 and p["promoted"] and "allowed by promote.allow_class_change" in p["reason"]
    assert "production_accuracy" not in p and "compared_on" not in p["class_change"]
