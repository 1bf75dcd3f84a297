"""Calibration (temperature scaling) and the out-of-distribution "unknown": the NumPy metrics against hand
computations, and end to end through the CLI on the session's trained run (docs/calibration.md)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from vgg_cli.inference import ood
from vgg_cli.task import calibration as cal

# ------------------------------------------------------------------------------------------------ metrics by hand

# 4 images, 2 classes: confidences 0.9 (right), 0.8 (wrong), 0.61 (right), 0.95 (right)
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.61, 0.39], [0.05, 0.95]])
TRUTH = np.array([0, 0, 0, 1])


def test_nll_and_brier_by_hand():
    assert cal.nll(PROBS, TRUTH) == pytest.approx(-(np.log(0.9) + np.log(0.2) + np.log(0.61) + np.log(0.95)) / 4)
    # Brier: (0.1^2 + 0.1^2) + (0.8^2 + 0.8^2) + (0.39^2 + 0.39^2) + (0.05^2 + 0.05^2), over 4
    assert cal.brier(PROBS, TRUTH) == pytest.approx((0.02 + 1.28 + 0.3042 + 0.005) / 4)


def test_ece_and_mce_by_hand():
    # 15 bins of width 1/15, (lo, hi]: 0.61 -> bin 9, 0.8 -> bin 11, 0.9 -> bin 13, 0.95 -> bin 14
    # each bin holds one image: gaps |1-0.61|=0.39, |0-0.8|=0.8, |1-0.9|=0.1, |1-0.95|=0.05
    ece, mce = cal.ece_mce(PROBS, TRUTH)
    assert ece == pytest.approx((0.39 + 0.8 + 0.1 + 0.05) / 4)
    assert mce == pytest.approx(0.8)
    # two images in one bin: |mean accuracy - mean confidence| weighted by the bin's share
    two = np.array([[0.9, 0.1], [0.91, 0.09]])
    ece2, mce2 = cal.ece_mce(two, np.array([0, 1]))
    assert ece2 == pytest.approx(abs(0.5 - 0.905)) and mce2 == pytest.approx(abs(0.5 - 0.905))
    rows = cal.reliability(PROBS, TRUTH)
    assert len(rows) == 15 and sum(r["images"] for r in rows) == 4 and rows[9]["images"] == 1


def test_metrics_edges_confidence_one_goes_in_the_last_bin():
    rows = cal.reliability(np.array([[1.0, 0.0]]), np.array([0]))
    assert rows[-1]["images"] == 1 and rows[-1]["accuracy"] == 1.0


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 5))
    p = cal.softmax(logits, 2.0)
    truth = np.array([rng.choice(5, p=row) for row in p])
    t = cal.fit_temperature(logits, truth)
    assert t == pytest.approx(2.0, rel=0.1)
    record = cal.calibrate(logits, truth)
    assert record["fitted"] and record["cross_fit"]["helped"] and record["temperature"] == pytest.approx(t)
    assert record["cross_fit"]["after"]["ece"] < record["cross_fit"]["before"]["ece"]


def test_an_already_calibrated_model_keeps_temperature_one():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (2000, 4))
    truth = np.array([rng.choice(4, p=row) for row in cal.softmax(logits)])
    record = cal.calibrate(logits, truth)
    # fitted close to 1; kept only when the half it was not fitted on says so
    assert record["fitted_temperature"] == pytest.approx(1.0, abs=0.1)
    assert record["temperature"] in (1.0, record["fitted_temperature"])


def test_too_few_images_are_not_fitted():
    record = cal.calibrate(np.zeros((5, 3)), np.array([0, 1, 2, 0, 1]))
    assert record == {"temperature": 1.0, "fitted": False, "reason": record["reason"]} and "too few" in record["reason"]


def test_ood_scores_by_hand():
    logits = np.array([[1.0, 2.0, 3.0]])
    assert ood.max_logit(logits)[0] == -3.0
    assert ood.energy(logits)[0] == pytest.approx(-np.log(np.exp(1) + np.exp(2) + np.exp(3)))
    feats = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    means, whiten = np.array([[0.0, 0.0], [2.0, 0.0]]), np.eye(2)  # identity covariance: squared Euclidean
    assert ood.mahalanobis(feats, means, whiten) == pytest.approx([0.0, 0.0, 164.0])
    assert ood.auroc([0, 1, 2], [3, 4]) == 1.0 and ood.auroc([3, 4], [0, 1]) == 0.0
    assert ood.auroc([1, 2], [1, 2]) == pytest.approx(0.5)
    assert ood.threshold_for(np.arange(1, 101), 0.95) == 95.0


def test_ood_stats_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    f, y = rng.normal(size=(60, 4)), np.repeat([0, 1, 2], 20)
    means, whiten = ood.fit_gaussian(f, y, 3)
    assert np.allclose(whiten @ whiten.T, np.linalg.inv(np.linalg.inv(whiten @ whiten.T)))
    stats = ood.OODStats("mahalanobis", 3.5, 0.95, "abc", means, whiten)
    stats.save(tmp_path / "best.ood.npz")
    back = ood.OODStats.load(tmp_path / "best.ood.npz")
    assert (back.method, back.threshold, back.acceptance, back.digest) == ("mahalanobis", 3.5, 0.95, "abc")
    assert np.allclose(back.score(None, f), stats.score(None, f), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ end to end


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def strange(tmp_path_factory) -> Path:
    """Out-of-distribution images for a model of red/green/blue noise: scikit-learn's two photos and stripes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = tmp_path_factory.mktemp("strange")
    for i, image in enumerate(load_sample_images().images):
        Image.fromarray(image).save(out / f"photo{i}.png")
    stripes = np.zeros((40, 40, 3), np.uint8)
    stripes[:, ::4] = 255
    Image.fromarray(stripes).save(out / "stripes.png")
    return out


def test_a_finished_run_is_calibrated_and_has_its_statistics(trained_run):
    run = trained_run["run_dir"]
    summary = json.loads((run / "summary.json").read_text())
    record = summary["calibration"]
    assert isinstance(record["temperature"], float) and record["reason"]
    assert record["ood"]["method"] == "mahalanobis" and record["ood"]["acceptance"] == 0.95
    assert record["ood"]["accepted_validation"] >= 0.95
    assert (run / "model" / "best.ood.npz").is_file()


def test_the_stored_temperature_divides_the_logits(trained_run, colour_holdout, tmp_path):
    """softmax(logits / T) exactly as documented: a copy of the run with T = 2.5 written into its model."""
    import keras

    from vgg_cli.data.images import load_image
    from vgg_cli.inference.forward import Forward
    from vgg_cli.model.load import load_model, set_temperature, temperature_of

    copy = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], copy, symlinks=True)
    model = load_model(copy / "model" / "best.keras")
    assert set_temperature(model, 2.5)
    model.save(copy / "model" / "best.keras")
    assert temperature_of(load_model(copy / "model" / "best.keras")) == 2.5
    images = sorted(str(p) for p in (colour_holdout / "red").iterdir())[:3]
    code, out, err = run_cli(["predict", "--run", str(copy), *images, "--format", "json", "--top-k", "3"])
    assert code == 0, err
    code, raw, err = run_cli(["predict", "--run", str(copy), *images, "--format", "json", "--top-k", "3",
                              "--uncalibrated"])
    assert code == 0, err
    batch = np.stack([load_image(p, 32, "squash") for p in images])
    logits = Forward(model)([batch])["logits"].astype(np.float64)
    classes = json.loads((copy / "classes.json").read_text())
    for row, raw_row, z in zip(_json_lines(out), _json_lines(raw), logits):
        for t, r in ((2.5, row), (1.0, raw_row)):
            expected = np.exp(z / t) / np.exp(z / t).sum()
            got = {d["label"]: d["probability"] for d in r["top_k"]}
            assert [got[c] for c in classes] == pytest.approx(list(expected), abs=1e-5)
    keras.backend.clear_session()


def test_unknown_for_images_unlike_the_training_images(trained_run, colour_holdout, strange):
    run = str(trained_run["run_dir"])
    code, out, err = run_cli(["predict", "--run", run, str(strange), "--format", "json"])
    assert code == 0, err
    rows = _json_lines(out)
    assert len(rows) == 3 and all(r["unknown"] and r["answer"] == "unknown" for r in rows), rows
    assert all(r["unknown_reason"] == "ood_score" and r["predicted"] in ("blue", "green", "red") for r in rows)
    code, out, err = run_cli(["predict", "--run", run, str(colour_holdout), "--format", "json"])
    rows = _json_lines(out)
    assert code == 0 and sum(not r["unknown"] for r in rows) >= len(rows) // 2, rows
    assert all(isinstance(r["ood_score"], float) for r in rows)


def test_csv_columns_and_min_probability(trained_run, colour_holdout):
    code, out, err = run_cli(["predict", "--run", str(trained_run["run_dir"]), str(colour_holdout / "red"),
                              "--format", "csv", "--top-k", "2", "--min-probability", "1.0"])
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label_1", "probability_1", "label_2", "probability_2", "error", "answer", "unknown",
                       "ood_score"]
    assert all(r[6] == "unknown" and r[7] in ("min_probability", "ood_score") for r in rows[1:]), rows
    assert all(float(r[8]) >= 0 for r in rows[1:])


def test_evaluate_reports_calibration_and_acceptance(trained_run, colour_holdout, tmp_path):
    code, out, err = run_cli(["evaluate", "--run", str(trained_run["run_dir"]), str(colour_holdout), "--json",
                              "--out", str(tmp_path / "ev")])
    assert code == 0, err
    report = json.loads(out)
    c, u = report["calibration"], report["unknown"]
    assert set(c["before"]) >= {"ece", "mce", "nll", "brier"} and not c["fitted_on_these_images"]
    assert len(c["reliability"]["before"]) == 15
    assert 0.0 <= u["accepted"] <= 1.0 and u["method"] == "mahalanobis" and len(u["per_class"]) == 3
    assert u["coverage"]["probability"][-1]["coverage"] == 1.0
    assert Path(report["files"]["reliability_png"]).is_file() and Path(report["files"]["coverage_png"]).is_file()
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "<h2>Accepted answers</h2>" in html


def test_onnx_export_carries_the_score(trained_run, colour_holdout, strange, tmp_path):
    import onnxruntime as ort

    from vgg_cli.data.images import load_image

    run = str(trained_run["run_dir"])
    out_file = tmp_path / "model.onnx"
    code, out, err = run_cli(["export", "--run", run, "--format", "onnx", "--out", str(out_file), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["output"]["ood_score"]["method"] == "mahalanobis" and report["ood_score_diff"] < 1e-3
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "ood_score"]
    files = sorted(str(p) for p in (colour_holdout / "blue").iterdir())[:2] + sorted(map(str, strange.iterdir()))
    code, out, err = run_cli(["predict", "--run", run, *files, "--format", "json"])
    expected = [r["ood_score"] for r in _json_lines(out)]
    batch = np.stack([load_image(f, 32, "squash") for f in files]).astype(np.float32)
    probs, scores = session.run(None, {"images": batch})
    assert np.allclose(scores, expected, rtol=1e-3, atol=1e-3), (scores, expected)
    meta = session.get_modelmeta().custom_metadata_map
    threshold = float(meta["ood_threshold"])
    assert [bool(s > threshold) for s in scores] == [r["unknown"] for r in _json_lines(out)]
