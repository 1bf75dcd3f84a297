"""Drift between nights (issue 26, item 3): the tests themselves (MMD, class shares), the night's comparison on
scanned folders without training, summary.json and the report section, and promote.on_drift through the CLI."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import COLOURS, TRAIN_ARGS, colour_image, make_colour_dataset, run_cli

# ------------------------------------------------------------------------------------------------ the tests

def test_mmd_flags_a_shift_and_not_the_same_distribution():
    from vgg_cli.data.drift import mmd_test

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 8))
    same = [mmd_test(rng.normal(size=(60, 8)), ref, seed=i)["p"] for i in range(10)]
    assert sum(p < 0.01 for p in same) <= 1 and max(same) > 0.05
    shifted = mmd_test(rng.normal(size=(60, 8)) + [0.8, 0, 0, 0, 0, 0, 0, 0], ref)
    assert shifted["p"] < 0.01 and shifted["p"] == pytest.approx(1 / 1001)
    x = rng.normal(size=(30, 8))
    assert mmd_test(x, ref, seed=3) == mmd_test(x, ref, seed=3)  # deterministic for a seed


def test_class_shares_flag_a_lopsided_night_only():
    from vgg_cli.data.drift import class_share_test

    ref = {"a": 100, "b": 100, "c": 100}
    assert class_share_test({"a": 10, "b": 11, "c": 9}, ref)["p"] > 0.5
    lopsided = class_share_test({"a": 28, "b": 1, "c": 1}, ref)
    assert lopsided["p"] < 0.01 and lopsided["shares"]["a"] == {"new": 0.9333, "reference": 0.3333}


def test_the_verdict_is_bonferroni_over_the_tests_held():
    from vgg_cli.data.drift import verdict

    two = verdict({"alpha": 0.01, "images": {"p": 0.004}, "classes": {"p": 0.9}})
    assert two["flagged"] and two["p"] == 0.008 and two["fired"] == ["images"]
    three = verdict({**two, "features": {"p": 0.5}})
    assert not three["flagged"] and three["p"] == pytest.approx(0.012) and three["fired"] == []


def test_image_stats_see_inversion_and_blur():
    from PIL import ImageFilter

    from vgg_cli.data.drift import STATS, image_stats

    img = colour_image((220, 40, 40), np.random.default_rng(0), 64)
    s = dict(zip(STATS, image_stats(np.asarray(img))))
    inv = dict(zip(STATS, image_stats(255 - np.asarray(img))))
    blur = dict(zip(STATS, image_stats(np.asarray(img.filter(ImageFilter.GaussianBlur(2))))))
    assert s["mean_r"] > 150 and inv["mean_r"] < 100 and inv["std_r"] == pytest.approx(s["std_r"])
    assert blur["sharpness"] < s["sharpness"] / 3


# ------------------------------------------------------------------------------------------------ a night, no training

def _config(data: Path, runs: Path):
    from vgg_cli.config.schema import load_config

    return load_config(None, [f"data.train_dir={data}", f"output.dir={runs}", *TRAIN_ARGS])


def _previous_run(data: Path, runs: Path) -> None:
    """runs/latest as far as the drift check reads it: a run folder whose data.json is the scan of ``data`` now."""
    from vgg_cli.runs.root import RunsRoot
    from vgg_cli.training.prepare import scan_dataset

    cfg = _config(data, runs)
    index = scan_dataset(cfg, RunsRoot.of(cfg))
    run = runs / "night1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data: {}\n")
    (run / "data.json").write_text(json.dumps(index.manifest()))
    os.symlink("night1", runs / "latest")


def _add(data: Path, per_class: int, seed: int, transform=None, classes=COLOURS) -> None:
    rng = np.random.default_rng(seed)
    for name in classes:
        (data / name).mkdir(exist_ok=True)
        for i in range(per_class):
            img = np.asarray(colour_image(COLOURS.get(name, (150, 40, 200)), rng))
            from PIL import Image

            Image.fromarray(transform(img) if transform else img).save(data / name / f"new{seed}_{i:03d}.png")


def moved_to(run: Path, data: Path) -> dict:
    """Point a copied run's manifest at a copy of its dataset (it names its folder); the file is replaced, not
    written in place (it may be a hard link to the original's). Returns the manifest."""
    manifest = json.loads((run / "data.json").read_text())
    (run / "data.json").unlink()
    (run / "data.json").write_text(json.dumps({**manifest, "train_dir": str(data.resolve())}))
    return manifest


def _drift(data: Path, runs: Path) -> dict:
    from vgg_cli.runs.root import RunsRoot
    from vgg_cli.training.prepare import night_drift, scan_dataset

    cfg = _config(data, runs)
    return night_drift(cfg, RunsRoot.of(cfg), scan_dataset(cfg, RunsRoot.of(cfg)))


@pytest.fixture
def night1(tmp_path) -> tuple[Path, Path]:
    data = make_colour_dataset(tmp_path / "photos", per_class=12, seed=0)
    runs = tmp_path / "runs"
    _previous_run(data, runs)
    return data, runs


def test_an_ordinary_night_is_not_flagged_a_drifted_one_is(night1, tmp_path):
    data, runs = night1
    plain = shutil.copytree(data, tmp_path / "plain")
    _add(plain, 8, seed=11)
    runs_plain = shutil.copytree(runs, tmp_path / "runs-plain", symlinks=True)
    manifest = moved_to(runs_plain / "night1", plain)
    ordinary = _drift(plain, runs_plain)
    assert ordinary["tested"] and not ordinary["flagged"] and ordinary["new_images"] == 24
    assert ordinary["reference_images"] == sum(f["split"] == "train" for f in manifest["files"])
    _add(data, 8, seed=12, transform=lambda a: 255 - a)  # inverted scans
    drifted = _drift(data, runs)
    assert drifted["flagged"] and drifted["p"] < 0.01 and "images" in drifted["fired"]
    assert drifted["stats"]["mean_r"]["new"] > drifted["stats"]["mean_r"]["reference"] + 50


def test_new_classes_are_left_out_and_a_night_without_new_images_reads_none(night1, monkeypatch):
    data, runs = night1
    import vgg_cli.training.prepare as prepare

    def no_reading(*_a, **_k):
        raise AssertionError("an image was read")

    monkeypatch.setattr(prepare, "load_image", no_reading)
    same = _drift(data, runs)
    assert same["tested"] is False and same["new_images"] == 0 and "fewer than 5" in same["reason"]
    _add(data, 6, seed=13, classes=["purple"])
    added = _drift(data, runs)
    assert added["new_classes"] == {"purple": 6} and added["new_images"] == 0 and added["tested"] is False


def test_a_held_night_stays_held_the_next_night(night1):
    """With a production run, tonight is compared with production's training images, not with a held latest run's
    (which trained on the drifted images)."""
    from vgg_cli.runs.root import RunsRoot
    from vgg_cli.training.prepare import scan_dataset

    data, runs = night1
    os.symlink("night1", runs / "production")
    _add(data, 8, seed=12, transform=lambda a: 255 - a)
    held = runs / "night2"  # trained on the drifted images, kept out of production: latest
    held.mkdir()
    (held / "config.yaml").write_text("data: {}\n")
    cfg = _config(data, runs)
    (held / "data.json").write_text(json.dumps(scan_dataset(cfg, RunsRoot.of(cfg)).manifest()))
    (runs / "latest").unlink()
    os.symlink("night2", runs / "latest")
    again = _drift(data, runs)
    assert again["flagged"] and again["previous_run"] == "night1" and again["baseline"] == "production"


def test_a_damaged_or_other_previous_manifest_is_not_tested(night1, tmp_path, caplog):
    data, runs = night1
    manifest = runs / "night1" / "data.json"
    elsewhere = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**elsewhere, "train_dir": str(tmp_path / "other")}))
    assert "trained on another folder" in _drift(data, runs)["reason"]
    manifest.write_text(json.dumps({"train_dir": elsewhere["train_dir"], "files": [{"path": 1}]}))
    with caplog.at_level(logging.WARNING, logger="vgg"):
        out = _drift(data, runs)
    assert out == {"tested": False, "reason": "the previous run night1's data.json is unreadable"}
    assert "drift not tested" in caplog.text


def test_the_first_run_is_not_tested(tmp_path):
    data = make_colour_dataset(tmp_path / "photos", per_class=4, seed=0)
    assert _drift(data, tmp_path / "runs") == {"tested": False, "reason": "no previous run"}


# ------------------------------------------------------------------------------------------------ records

FLAGGED = {"tested": True, "flagged": True, "p": 0.002, "alpha": 0.01, "fired": ["images"], "previous_run": "n1",
           "new_images": 24, "reference_images": 29, "new_classes": {"purple": 3},
           "images": {"mmd2": 0.15, "p": 0.001, "permutations": 1000},
           "classes": {"chi2": 0.1, "p": 0.9, "shares": {"red": {"new": 0.5, "reference": 0.5}}},
           "features": {"mmd2": 0.2, "p": 0.004, "permutations": 1000},
           "stats": {"mean_r": {"new": 160.0, "reference": 85.0}}}


def test_summary_reads_drift_and_old_summaries_still_read():
    from vgg_cli.errors import DataError
    from vgg_cli.runs.summary import Summary

    old = Summary.parse({"status": "finished", "classes": ["a", "b"]})
    assert old.drift is None and old.drift_flagged is False and old.schema == 1
    assert Summary.parse({"status": "finished", "drift": FLAGGED}).drift_flagged
    with pytest.raises(DataError, match="'drift' is str"):
        Summary.parse({"status": "finished", "drift": "yes"})


def test_drift_section_says_what_was_found():
    from vgg_cli.reporting.drift_section import drift_section

    flagged = drift_section(FLAGGED, "hold")
    assert "data-drift=flagged" in flagged and "not promoted for it" in flagged and "purple (3 images)" in flagged
    assert "p=0.001" in flagged and "<td>mean_r</td><td>160.0</td><td>85.0</td>" in flagged
    assert "<td>frozen features (MMD, RBF kernel)</td><td>0.004</td>" in flagged
    assert "data-drift=ok" in drift_section({**FLAGGED, "flagged": False, "fired": []})
    assert "data-drift=untested" in drift_section({"tested": False, "reason": "no previous run"})
    assert "before the drift check" in drift_section(None)
    assert "&lt;b&gt;" in drift_section({**FLAGGED, "previous_run": "<b>"})


def test_on_drift_hold_is_a_reason_and_warn_a_warning(caplog):
    from vgg_cli.promotion.decide import _drift_reasons

    record: dict = {}
    (reason,) = _drift_reasons(record, "hold", FLAGGED, "night2")
    assert "promote.on_drift=hold" in reason and "vgg promote night2" in reason and "p=0.001" in reason
    assert record["drift"] == {"flagged": True, "p": 0.002, "on_drift": "hold"}
    with caplog.at_level(logging.WARNING, logger="vgg"):
        assert _drift_reasons({}, "warn", FLAGGED, "night2") == []
    assert "promote.on_drift=warn: judged as usual" in caplog.text
    assert _drift_reasons({}, "hold", {**FLAGGED, "flagged": False}, "night2") == []
    assert _drift_reasons({}, "hold", None, "night2") == []


# ------------------------------------------------------------------------------------------------ through the CLI

def copy_runs(runs: Path, to: Path) -> Path:
    """A runs folder of its own (hard links: run files are only ever replaced, never written in place)."""
    return Path(shutil.copytree(runs, to, symlinks=True, copy_function=os.link,
                                ignore=shutil.ignore_patterns(".lock")))


NIGHT = [*TRAIN_ARGS, "train.epochs=3", "output.report=false", "output.tensorboard=false"]


@pytest.mark.slow
def test_a_drifted_night_is_held_or_warned(trained_run, tmp_path):
    data = shutil.copytree(trained_run["data"], tmp_path / "photos")
    first = trained_run["run_dir"].name
    _add(data, 8, seed=21, transform=lambda a: 255 - a)
    results = {}
    for mode in ("hold", "warn"):
        runs = copy_runs(trained_run["runs"], tmp_path / mode)
        moved_to(runs / first, data)
        code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "--json", *NIGHT,
                                  f"promote.on_drift={mode}"])
        result = json.loads(out)
        summary = json.loads((Path(result["run"]) / "summary.json").read_text())
        assert summary["drift"]["flagged"] and summary["drift"]["previous_run"] == first, err
        assert summary["drift"]["new_images"] == 24 and "drift: drifted: 24 new images" in err
        features = summary["drift"]["features"]  # head-only training: the frozen features were compared too
        assert features["new"] == 24 and 0 < features["p"] <= 1 and "frozen features MMD" in err
        results[mode] = (code, result["promotion"], runs)
    code, p, runs = results["hold"]
    assert code == 3 and not p["promoted"] and "promote.on_drift=hold" in p["reason"]
    assert (runs / "production").resolve().name == first and (runs / "latest").resolve().name != first
    code, p, runs = results["warn"]
    assert "drift" not in p["reason"] and p["drift"]["on_drift"] == "warn"
    usual = p["new_accuracy"] >= p["production_accuracy"] and p["new_accuracy"] > p["min_accuracy"]
    assert p["promoted"] is usual and code == (0 if usual else 3)


@pytest.mark.slow
def test_an_unchanged_night_reads_no_image(trained_run, tmp_path, monkeypatch):
    """--if-changed on the same data and config stops before the drift check (and the scan's cache reads nothing)."""
    import vgg_cli.training.prepare as prepare
    from vgg_cli.data import checks

    def no_reading(*_a, **_k):
        raise AssertionError("an image was read")

    runs = copy_runs(trained_run["runs"], tmp_path / "runs")
    monkeypatch.setattr(prepare, "load_image", no_reading)
    monkeypatch.setattr(checks, "check_one", no_reading)
    code, out, err = run_cli(["train", f"data.train_dir={trained_run['data']}", f"output.dir={runs}", "--if-changed",
                              "--json", *TRAIN_ARGS])
    assert code == 0 and json.loads(out)["status"] == "nothing_to_do", err
