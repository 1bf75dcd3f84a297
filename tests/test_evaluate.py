"""`vgg evaluate` and `vgg lr-find`: numbers checked by hand, files checked on disk, pictures checked as images."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_colour_dataset, run_cli
from vgg_cli.task import SINGLE_LABEL

scores = SINGLE_LABEL.scores


def test_scores_match_a_hand_computation():
    # true:      0  0  1  1  2   (class 2 is never predicted; class 3 has no images)
    # predicted: 0  1  1  1  0
    ranked = [[0, 1, 2, 3], [1, 0, 2, 3], [1, 2, 0, 3], [1, 0, 3, 2], [0, 2, 1, 3]]
    s = scores([0, 0, 1, 1, 2], ranked, 4)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["confusion"].tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    p = s["per_class"]
    assert [c["precision"] for c in p] == pytest.approx([1 / 2, 2 / 3, 0.0, 0.0])
    assert [c["recall"] for c in p[:3]] == pytest.approx([1 / 2, 1.0, 0.0]) and p[3]["recall"] is None
    assert [c["f1"] for c in p[:3]] == pytest.approx([0.5, 0.8, 0.0]) and p[3]["f1"] is None
    assert [c["support"] for c in p] == [2, 2, 1, 0]
    assert s["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)  # the class without images is left out
    assert s["weighted"]["recall"] == pytest.approx((2 * 0.5 + 2 * 1.0 + 1 * 0.0) / 5)
    assert "top5_accuracy" not in s  # 4 classes: top-5 would always be 1
    six = scores([5, 0], [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]], 6)
    assert six["top5_accuracy"] == pytest.approx(0.5) and six["accuracy"] == pytest.approx(0.5)


def _png(path: Path, min_side: int = 300) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side, (path, im.size)
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20


@pytest.mark.slow
def test_evaluate_validation_split_agrees_with_predict(trained_run):
    run = trained_run["run_dir"]
    code, out, err = run_cli(["evaluate", "--run", str(run), "--json"])
    assert code == 0, err
    report = json.loads(out)
    out_dir = run / "evaluation" / "val"
    assert report["out_dir"] == str(out_dir) and report["data"] == f"validation split of run {run.name}"
    # answered from the run's cached frozen-block features (every one cached): the same answers as predict's below
    n_val = len([f for f in json.loads((run / "data.json").read_text())["files"] if f["split"] == "val"])
    assert report["outputs_from"] == f"the feature cache of frozen blocks 1-5 ({n_val} of {n_val} images) and the " \
        "trainable rest"
    # the same numbers by hand, from `vgg predict` on the run's validation files
    data = json.loads((run / "data.json").read_text())
    val = [f for f in data["files"] if f["split"] == "val"]
    files = [str(Path(data["train_dir"]) / f["path"]) for f in val]
    code, pred, _ = run_cli(["predict", *files, "--run", str(run), "--format", "json"])
    labels = [json.loads(line)["predicted"] for line in pred.splitlines()]  # (label: the answer, maybe unknown)
    truth = [data["classes"][f["label"]] for f in val]
    assert report["images"] == len(val)
    assert report["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(labels, truth)]))
    matrix = np.asarray(report["confusion_matrix"])
    for i, c in enumerate(report["classes"]):
        for j, d in enumerate(report["classes"]):
            assert matrix[i, j] == sum(t == c and p == d for t, p in zip(truth, labels))
    for name in ("report.json", "per_class.csv", "confusion_matrix.csv", "misclassified.csv"):
        assert (out_dir / name).is_file()
    _png(out_dir / "confusion_matrix.png")
    _png(out_dir / "confusion_matrix_normalised.png")
    grid = list(csv.reader((out_dir / "confusion_matrix.csv").open()))
    assert grid[0][1:] == report["classes"] and [list(map(int, r[1:])) for r in grid[1:]] == matrix.tolist()
    wrong = list(csv.DictReader((out_dir / "misclassified.csv").open()))
    assert len(wrong) == report["misclassified"] == sum(a != b for a, b in zip(labels, truth))
    per_class = list(csv.DictReader((out_dir / "per_class.csv").open()))
    assert [int(r["support"]) for r in per_class] == [truth.count(c) for c in report["classes"]]
    code, text, _ = run_cli(["evaluate", "--run", str(run)])
    assert code == 0 and "macro avg" in text and "confusion matrix (rows: true class" in text


def test_evaluate_on_a_folder_reports_missing_classes_and_misclassified_files(trained_run, tmp_path):
    folder = make_colour_dataset(tmp_path / "test", per_class=3, seed=21, classes=["red", "blue"])
    # a green image filed under red: must show up as misclassified with its top predictions
    make_colour_dataset(tmp_path / "g", per_class=1, seed=5, classes=["green"])
    shutil.copy(tmp_path / "g" / "green" / "green_000.png", folder / "red" / "mislabelled.png")
    (folder / "blue" / "broken.jpg").write_bytes(b"not a jpeg")
    out_dir = tmp_path / "report"
    code, out, err = run_cli(["evaluate", str(folder), "--run", str(trained_run["run_dir"]), "--out", str(out_dir),
                              "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["missing_classes"] == ["green"] and "no images of class(es) ['green']" in err
    assert "skipped blue/broken.jpg" in err and report["skipped"][0]["path"] == "blue/broken.jpg"
    green = next(r for r in report["per_class"] if r["class"] == "green")
    assert green["support"] == 0 and green["recall"] is None
    assert report["images"] == 7
    wrong = {Path(r["path"]).name: r for r in csv.DictReader((out_dir / "misclassified.csv").open())}
    assert "mislabelled.png" in wrong and wrong["mislabelled.png"]["true_class"] == "red"
    assert wrong["mislabelled.png"]["predicted_class"] == "green"
    assert wrong["mislabelled.png"]["top_k"].startswith("green:")


def test_evaluate_errors(trained_run, tmp_path):
    folder = make_colour_dataset(tmp_path / "test", per_class=2, seed=2, classes=["red"])
    (folder / "purple").mkdir()
    Image.new("RGB", (40, 40), (120, 0, 120)).save(folder / "purple" / "p.png")
    code, _, err = run_cli(["evaluate", str(folder), "--run", str(trained_run["run_dir"])])
    assert code == 65 and "class folder(s) ['purple'] that the model does not know" in err
    code, _, err = run_cli(["evaluate", "--model", str(trained_run["run_dir"] / "model" / "best.keras")])
    assert code == 64 and "--model FILE needs DATA_DIR" in err
    code, _, err = run_cli(["evaluate", str(tmp_path / "nowhere"), "--run", str(trained_run["run_dir"])])
    assert code == 66 and "is not a folder" in err
    # the unknown class is refused before any framework loads (it took 13.6 s: a TensorFlow import and the model)
    import subprocess
    import sys

    from tests.test_nightly_edges import ENV, NO_FRAMEWORK, ROOT

    r = subprocess.run([sys.executable, "-c", NO_FRAMEWORK, "evaluate", str(folder), "--run",
                        str(trained_run["run_dir"])], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 65 and "['purple'] that the model does not know" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]", r.stderr  # not even Keras
