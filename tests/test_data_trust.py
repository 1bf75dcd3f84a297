"""Data a nightly run can trust (issue 26, items 1-2): duplicates and leakage in the scan, label conflicts, and
suspected label errors (label_issues.csv, `vgg check --labels`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIZE, TRAIN_ARGS, colour_image, make_colour_dataset, run_cli, tree_hashes


def scene_image(rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A picture with structure (a 4x4 grid of random colours, smoothed, a little noise), unlike its siblings."""
    grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), "RGB")
    arr = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    return Image.fromarray(np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8), "RGB")


def make_scenes(root: Path, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in ("red", "green", "blue"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scene_image(rng).save(root / name / f"{name}_{i:03d}.png")
    return root


def copy_of(src: Path, dest: Path, how: str) -> Path:
    """A near-duplicate of ``src``: resized by 10 %, or re-compressed as JPEG (its bytes differ)."""
    img = Image.open(src).convert("RGB")
    if how == "resized":
        img.resize((round(img.width * 1.1), round(img.height * 1.1)), Image.Resampling.BICUBIC).save(dest)
    else:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        dest.write_bytes(buf.getvalue())
    return dest


def scan_of(data: Path, cache: Path, previous=None, **over):
    from vgg_cli.config.schema import load_config
    from vgg_cli.data.scan import scan

    args = [f"data.train_dir={data}", f"data.image_size={SIZE}", *(f"{k}={v}" for k, v in over.items())]
    return scan(load_config(None, args).data, previous_splits=previous, cache_dir=cache)


def test_image_print_pairs_copies_and_not_other_images():
    from vgg_cli.data.duplicates import image_print, near_pairs

    rng = np.random.default_rng(0)
    imgs = [np.asarray(colour_image((220, 40, 40), rng, 40).resize((SIZE, SIZE))) for _ in range(3)]
    imgs += [np.asarray(scene_image(rng).resize((SIZE, SIZE))) for _ in range(3)]
    prints = [image_print(a) for a in imgs]
    assert near_pairs(prints, [str(i) for i in range(6)]) == []  # same colour or not, different pictures: no pair
    brighter = np.clip(imgs[2].astype(int) + 3, 0, 255).astype(np.uint8)
    pairs = near_pairs(prints + [image_print(brighter), prints[4]], [str(i) for i in range(7)] + ["4"])
    assert pairs == [(4, 7, "exact"), (2, 6, "near")]


def test_copies_share_one_side_of_the_split_and_new_copies_follow_old_images(tmp_path):
    data = make_scenes(tmp_path / "d", per_class=10)
    for name in ("red_001", "green_002", "blue_003", "red_004"):
        cls = name.split("_")[0]
        copy_of(data / cls / f"{name}.png", data / cls / f"{name}-big.png", "resized")
        copy_of(data / cls / f"{name}.png", data / cls / f"{name}-q80.jpg", "jpeg")
    index = scan_of(data, tmp_path / "cache", **{"data.val_split": 0.4})
    split = {e.path: e.split for e in index.files}
    groups = index.duplicates["groups"]
    assert len(groups) == 4 and all(len(g["files"]) == 3 and g["kind"] == "near" for g in groups)
    assert all(len({split[f] for f in g["files"]}) == 1 for g in groups), groups
    assert index.duplicates["leaked"] == [] and index.judged_split() == index.split("val")
    # Sticky: the old images keep their side, a new copy of an old validation image goes to validation.
    val_image = next(p for p, s in split.items() if s == "val" and "-" not in p)
    new = copy_of(data / val_image, data / val_image.replace(".png", "-new.jpg"), "jpeg")
    again = scan_of(data, tmp_path / "cache", previous=split, **{"data.val_split": 0.4})
    assert {e.path: e.split for e in again.files}[new.relative_to(data).as_posix()] == "val"


def test_old_assignments_across_the_split_leave_leaked_images_out_of_the_judged_split(tmp_path):
    data = make_scenes(tmp_path / "d", per_class=6)
    copy_of(data / "red" / "red_000.png", data / "red" / "red_000-big.png", "resized")
    previous = {e.path: e.split for e in scan_of(data, tmp_path / "c0").files}
    previous["red/red_000.png"], previous["red/red_000-big.png"] = "train", "val"  # assigned before vgg knew
    index = scan_of(data, tmp_path / "cache", previous=previous)
    assert index.duplicates["leaked"] == ["red/red_000-big.png"] and index.duplicates["across_splits"] == 1
    judged = index.judged_split()[0]
    assert len(judged) == len(index.split("val")[0]) - 1 and not any(p.endswith("red_000-big.png") for p in judged)
    from vgg_cli.data.index import index_from_manifest

    back = index_from_manifest(json.loads(json.dumps(index.manifest())))
    assert back.judged_split() == index.judged_split() and back.fingerprint == index.fingerprint


def test_cross_class_copies_are_label_conflicts_kept_or_dropped(tmp_path):
    data = make_scenes(tmp_path / "d", per_class=5)
    copy_of(data / "red" / "red_002.png", data / "blue" / "looks-red.jpg", "jpeg")
    runs = tmp_path / "runs"
    before = tree_hashes(data)
    code, out, _ = run_cli(["check", str(data), f"output.dir={runs}", f"data.image_size={SIZE}"])
    assert code == 65 and "label conflicts, trained as labelled (data.duplicates=keep)" in out, out
    assert "same image in several classes: blue/looks-red.jpg, red/red_002.png" in out
    code, out, _ = run_cli(["check", str(data), f"output.dir={runs}", f"data.image_size={SIZE}",
                            "data.duplicates=drop", "--json"])
    report = json.loads(out)
    assert code == 65 and report["duplicates"]["dropped"] == ["blue/looks-red.jpg", "red/red_002.png"]
    assert report["images"] == 14 and report["duplicates"]["label_conflicts"] == 1
    kept = scan_of(data, tmp_path / "cache")
    assert len(kept.files) == 16 and kept.duplicates["policy"] == "keep" and kept.duplicates["dropped"] == []
    assert tree_hashes(data) == before


def test_an_unchanged_night_reads_no_image_and_finds_the_same_duplicates(tmp_path, monkeypatch):
    from vgg_cli.data import checks

    data = make_scenes(tmp_path / "d", per_class=6)
    copy_of(data / "green" / "green_001.png", data / "green" / "again.jpg", "jpeg")
    first = scan_of(data, tmp_path / "cache")
    reads = []
    real = checks.check_one
    monkeypatch.setattr(checks, "check_one", lambda p, s: reads.append(p) or real(p, s))
    again = scan_of(data, tmp_path / "cache")
    assert reads == [] and again.duplicates == first.duplicates and first.duplicates["groups_total"] == 1


def test_confident_learning_finds_flipped_labels_and_out_of_fold_probabilities_are_honest():
    from vgg_cli.evaluation.confident_learning import confident_learning, out_of_fold

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 60)
    features = rng.normal(0, 1, (180, 8)) + np.eye(3, 8)[truth] * 4  # three separable clusters
    given = truth.copy()
    flipped = rng.choice(180, 9, replace=False)
    given[flipped] = (truth[flipped] + 1) % 3
    probs = out_of_fold(features, given, 3)
    assert probs.shape == (180, 3) and np.allclose(probs.sum(axis=1), 1)
    found = confident_learning(given, probs)
    assert set(found.tolist()) <= set(flipped.tolist()) and len(found) >= 7  # nothing else, and most of them
    assert probs[found[0], given[found[0]]] <= probs[found[-1], given[found[-1]]]  # most suspect first
    assert confident_learning(truth, np.eye(3)[truth] * 0.9 + 0.1 / 3).size == 0  # clean labels: no suspect


def test_the_wide_logistic_regression_descends_on_dual_coefficients_to_the_same_weights():
    """More features than images (block-5 features of a few hundred images): the descent on the Gram matrix gives
    the weights of the descent on the features themselves."""
    from vgg_cli.evaluation.confident_learning import _fit_softmax

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 40)
    x = rng.normal(0, 1, (40, 300)) + np.eye(4, 300)[y] * 3
    dual, primal = _fit_softmax(x, y, 4, dual=True), _fit_softmax(x, y, 4, dual=False)
    assert dual.shape == primal.shape == (301, 4) and np.abs(primal).max() > 0.01
    # (the dual's step comes from the Gram matrix's exact top eigenvalue, the primal's from 30 power iterations)
    np.testing.assert_allclose(dual, primal, rtol=1e-4, atol=1e-7 * np.abs(primal).max())


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory) -> dict:
    """One head-only run on colour classes with planted faults: a training image copied into validation (leaked),
    a red image labelled blue in training and one labelled green in validation."""
    import shutil

    root = tmp_path_factory.mktemp("planted")
    train = make_colour_dataset(root / "train", per_class=16, seed=0)
    val = make_colour_dataset(root / "val", per_class=4, seed=1)
    shutil.move(train / "red" / "red_005.png", train / "blue" / "red_005.png")
    shutil.move(val / "red" / "red_001.png", val / "green" / "red_001.png")
    scene_image(np.random.default_rng(5)).save(train / "red" / "scene.png")
    copy_of(train / "red" / "scene.png", val / "red" / "scene-copy.jpg", "jpeg")
    runs = root / "runs"
    args = [f"data.train_dir={train}", f"data.val_dir={val}", f"output.dir={runs}", "model.freeze_blocks=[1,2,3,4,5]",
            *TRAIN_ARGS]
    code, out, err = run_cli(["train", *args])
    assert code == 0, err
    return {"run": Path(out.strip().splitlines()[-1]), "runs": runs, "err": err, "val": val}


@pytest.mark.slow
def test_a_leaked_validation_image_is_left_out_of_the_judged_accuracy(planted_run):
    run = planted_run["run"]
    manifest = json.loads((run / "data.json").read_text())
    assert manifest["duplicates"]["leaked"] == ["val_dir:red/scene-copy.jpg"], manifest["duplicates"]
    n_val = sum(1 for f in manifest["files"] if f["split"] == "val")
    promotion = json.loads((run / "summary.json").read_text())["promotion"]
    assert promotion["evaluated_on"] == {"images": n_val - 1, "held_out": True, "leaked_left_out": 1}
    evaluation = json.loads((run / "evaluation" / "val" / "report.json").read_text())
    assert evaluation["images"] == n_val - 1 and "1 leaked left out" in evaluation["data"]
    assert "leaked: 1 validation image(s) have a copy in training (val_dir:red/scene-copy.jpg)" in planted_run["err"]
    page = (run / "report.html").read_text()
    assert 'data-leaked="1"' in page and "label-issues data-suspects=" in page


@pytest.mark.slow
def test_label_issues_rank_the_planted_flipped_labels_and_check_labels_prints_them(planted_run):
    run = planted_run["run"]
    rows = list(csv.DictReader((run / "label_issues.csv").open()))
    ranked = [Path(r["path"]).relative_to(Path(r["path"]).parents[1]).as_posix() for r in rows]
    planted = {"blue/red_005.png": ("train", "blue"), "green/red_001.png": ("val", "green")}
    assert ranked and ranked[0] in planted, rows  # the most suspect image is a planted flip
    top = rows[0]
    assert (top["split"], top["given_class"]) == planted[ranked[0]] and top["suggested_class"] == "red"
    assert "5-fold logistic regression on the features of the frozen blocks 1-5" in top["probabilities_from"]
    assert (run / "label_issues.png").is_file()
    code, out, _ = run_cli(["check", "--labels", "latest", f"output.dir={planted_run['runs']}"])
    assert code == 0 and "suspected label errors:" in out and ranked[0] in out, out
    assert out.index(ranked[0]) < out.index("written to")
    code, out, _ = run_cli(["check", "--labels", str(planted_run["val"]), "--json"])
    assert code == 66 and out == ""


def test_report_sections_say_what_the_run_folder_holds(tmp_path):
    from vgg_cli.reporting.data_quality import duplicates_section, label_issues_section

    assert "before the duplicate check" in duplicates_section({})
    dup = {"policy": "drop", "groups_total": 2, "images_in_groups": 4, "label_conflicts": 1, "across_splits": 1,
           "leaked": ["a/x.png"], "dropped": ["a/y.png", "b/y.png"],
           "groups": [{"kind": "near", "conflict": True, "files": ["a/y.png", "b/y.png"], "classes": ["a", "b"],
                       "splits": ["train", "train"]},
                      {"kind": "exact", "conflict": False, "files": ["a/x.png", "a/z.png"], "classes": ["a"],
                       "splits": ["val", "train"]}]}
    html = duplicates_section({"duplicates": dup})
    assert 'data-conflicts="1" data-leaked="1" data-dropped="2"' in html and "data.duplicates=drop" in html
    assert "a/y.png; b/y.png" in html and "a/x.png; a/z.png" in html
    assert "not examined" in label_issues_section(tmp_path / "none.csv", tmp_path / "none.png")
    (tmp_path / "l.csv").write_text("rank,path,split,given_class,suggested_class,given_class_probability,"
                                    "suggested_class_probability,probabilities_from\n1,/d/b/<x>.png,train,b,a,"
                                    "0.010000,0.990000,k-fold\n")
    html = label_issues_section(tmp_path / "l.csv", tmp_path / "l.png")
    assert "data-suspects=1" in html and "&lt;x&gt;.png" in html and "l.png is missing" in html
