"""Test-time augmentation: the variants are what they claim, and predict/evaluate average exactly over them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from vgg_cli.inference.predict import TTA, tta_views


def test_tta_views_are_the_image_its_mirror_and_four_edge_padded_shifts():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert len(tta_views(batch, "none")) == 1 and tta_views(batch, "none")[0] is batch
    flip = tta_views(batch, "flip")
    assert len(flip) == 2 and np.array_equal(flip[1], batch[:, :, ::-1])
    shifts = tta_views(batch, "shift")[1:]
    assert len(shifts) == 4 and all(v.shape == batch.shape for v in shifts)
    d = 2  # 1/16 of 32 px
    up, down, left, right = shifts
    assert np.array_equal(up[:, d:], batch[:, :-d]) and np.array_equal(up[:, :d], np.repeat(batch[:, :1], d, 1))
    assert np.array_equal(down[:, :-d], batch[:, d:])
    assert np.array_equal(left[:, :, d:], batch[:, :, :-d]) and np.array_equal(right[:, :, :-d], batch[:, :, d:])
    assert len(tta_views(batch, "flip+shift")) == 6 and set(TTA) == {"none", "flip", "shift", "flip+shift"}
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_views(batch, "rotate")


@pytest.mark.slow
def test_predict_with_flip_averages_the_image_and_its_mirror(trained_run, colour_holdout, tmp_path):
    files = sorted(colour_holdout.rglob("*.png"))[:4]
    mirrored = []
    for f in files:  # the mirror images, resized first as vgg would (a mirror commutes with the resize)
        m = tmp_path / f"m_{f.parent.name}_{f.name}"
        Image.open(f).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).transpose(
            Image.Transpose.FLIP_LEFT_RIGHT).save(m)
        mirrored.append(m)
    resized = []
    for f in files:
        r = tmp_path / f"r_{f.parent.name}_{f.name}"
        Image.open(f).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR).save(r)
        resized.append(r)

    def probs(paths, *extra):
        code, out, err = run_cli(["predict", *map(str, paths), "--run", str(trained_run["run_dir"]), "--format",
                                  "json", "--top-k", "3", *extra])
        assert code == 0, err
        return [{t["label"]: t["probability"] for t in json.loads(line)["top_k"]} for line in out.splitlines()]

    averaged = probs(resized, "--tta", "flip")
    for a, b, both in zip(probs(resized), probs(mirrored), averaged):
        for label in both:
            assert both[label] == pytest.approx((a[label] + b[label]) / 2, abs=1e-5)


@pytest.mark.slow
def test_evaluate_records_its_tta(trained_run, colour_holdout, tmp_path):
    code, out, err = run_cli(["evaluate", str(colour_holdout), "--run", str(trained_run["run_dir"]), "--tta",
                              "flip+shift", "--out", str(tmp_path / "ev"), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["tta"] == "flip+shift" and report["images"] == 12 and report["accuracy"] >= 11 / 12
    code, _, err = run_cli(["evaluate", str(colour_holdout), "--run", str(trained_run["run_dir"]), "--tta", "spin"])
    assert code == 64 and "'spin' is not one of" in err


def test_gradcam_with_tta_says_its_probability_is_the_image_alone(trained_run, colour_holdout, tmp_path):
    image = str(next(colour_holdout.glob("red/*.png")))
    args = ["predict", image, "--run", str(trained_run["run_dir"]), "--format", "json", "--gradcam", str(tmp_path)]
    code, out, err = run_cli([*args, "--tta", "flip"])
    row = json.loads(out)
    assert code == 0 and "without --tta flip" in row["gradcam"]["probability_is"], err
    code, out, err = run_cli(args)
    plain = json.loads(out)
    assert "probability_is" not in plain["gradcam"]
    assert abs(plain["gradcam"]["probability"] - plain["probability"]) < 1e-5  # without TTA they are the same
