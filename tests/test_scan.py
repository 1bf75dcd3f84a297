"""Dataset scanning: classes, nested folders, skipped files with reasons, and a split that never moves old files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.conftest import make_colour_dataset, tree_hashes
from vgg_cli.config.schema import load_config
from vgg_cli.data.index import TRAIN, VAL
from vgg_cli.data.scan import previous_splits_from, scan
from vgg_cli.errors import DataError, NoInputError


def cfg(root, **kw):
    over = [f"data.train_dir={root}", "data.image_size=32"] + [f"data.{k}={json.dumps(v)}" for k, v in kw.items()]
    return load_config(None, over).data


def test_classes_sorted_nested_hidden_and_non_images(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=3, classes=["red", "blue"])
    (root / "blue" / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(root / "blue" / "sub" / "deeper" / "n.PNG")
    Image.new("RGB", (8, 8), "blue").save(root / "blue" / ".hidden.png")
    (root / "blue" / ".cache").mkdir()
    Image.new("RGB", (8, 8), "blue").save(root / "blue" / ".cache" / "x.png")
    (root / "red" / "notes.txt").write_text("hi")
    (root / ".git").mkdir()
    idx = scan(cfg(root, val_split=0.0))
    assert idx.classes == ["blue", "red"]
    paths = sorted(e.path for e in idx.files)
    assert "blue/sub/deeper/n.PNG" in paths
    assert not any(".hidden" in p or ".cache" in p for p in paths)
    assert len(paths) == 7 and idx.ignored_files == 1


def test_data_classes_fixes_order_and_subset(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=2)
    idx = scan(cfg(root, classes=["red", "blue"]))
    assert idx.classes == ["red", "blue"]
    assert {e.label for e in idx.files if e.path.startswith("red/")} == {0}
    assert idx.excluded_classes == [{"class": "green", "reason": "not listed in data.classes"}]
    with pytest.raises(DataError, match=r"data.classes names \['purple'\]"):
        scan(cfg(root, classes=["red", "purple"]))


def test_bad_files_skipped_with_reasons_and_empty_class_left_out(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=3, classes=["red", "blue"])
    (root / "red" / "zero.jpg").write_bytes(b"")
    (root / "red" / "text.png").write_text("nope")
    (root / "ghosts").mkdir()
    (root / "ghosts" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    idx = scan(cfg(root))
    reasons = {s["path"]: s["reason"] for s in idx.skipped}
    assert set(reasons) == {"red/zero.jpg", "red/text.png", "ghosts/broken.jpg"}
    assert "empty" in reasons["red/zero.jpg"] and "not an image" in reasons["red/text.png"]
    assert idx.classes == ["blue", "red"]
    assert idx.excluded_classes == [{"class": "ghosts", "reason": "no usable images"}]
    manifest = idx.manifest()
    assert manifest["skipped"] == idx.skipped and manifest["excluded_classes"] == idx.excluded_classes
    # ...but a class named in data.classes with no usable images is an error
    with pytest.raises(DataError, match="'ghosts' listed in data.classes has no usable images"):
        scan(cfg(root, classes=["red", "ghosts"]))


def test_errors_for_missing_empty_and_single_class(tmp_path):
    with pytest.raises(NoInputError, match="does not exist"):
        scan(cfg(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        scan(cfg(tmp_path / "empty"))
    one = make_colour_dataset(tmp_path / "one", per_class=3, classes=["red"])
    with pytest.raises(DataError, match="at least 2 are needed"):
        scan(cfg(one))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NoInputError, match="is not a folder"):
        scan(cfg(tmp_path / "file"))


def test_every_class_with_two_images_gets_a_validation_image(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=2)
    make_colour_dataset(root, per_class=1, classes=["red"], start=50)  # red now has 3
    make_colour_dataset(tmp_path / "solo", per_class=1, classes=["green"])
    idx = scan(cfg(root, val_split=0.05))
    counts = idx.counts()
    assert all(c[VAL] >= 1 and c[TRAIN] >= 1 for c in counts.values()), counts


def test_split_is_a_stable_function_of_the_path(tmp_path):
    a = make_colour_dataset(tmp_path / "a", per_class=30)
    b = make_colour_dataset(tmp_path / "b", per_class=30, seed=5)  # same names, different pixels
    split_a = {e.path: e.split for e in scan(cfg(a)).files}
    split_b = {e.path: e.split for e in scan(cfg(b)).files}
    assert split_a == split_b
    share = sum(s == VAL for s in split_a.values()) / len(split_a)
    assert 0.08 < share < 0.35  # about val_split=0.2


def test_adding_files_never_moves_existing_ones(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=2)  # tiny: min-1-val forcing decides some splits
    first = scan(cfg(root))
    before = {e.path: e.split for e in first.files}
    previous = previous_splits_from(first.manifest(), cfg(root))
    assert previous == before
    make_colour_dataset(root, per_class=40, seed=3, start=100)
    second = scan(cfg(root), previous_splits=previous)
    after = {e.path: e.split for e in second.files}
    assert {p: after[p] for p in before} == before
    assert len(after) == len(before) + 120
    assert second.fingerprint != first.fingerprint
    # a different val_split or folder means the old assignments do not apply
    assert previous_splits_from(first.manifest(), cfg(root, val_split=0.3)) == {}
    assert previous_splits_from(first.manifest(), cfg(tmp_path / "other")) == {}


def test_fingerprint_tracks_content(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=3)
    f1 = scan(cfg(root)).fingerprint
    assert scan(cfg(root)).fingerprint == f1
    Image.new("RGB", (40, 40), (1, 2, 3)).save(root / "red" / "red_000.png")  # same name, new pixels
    assert scan(cfg(root)).fingerprint != f1


def test_val_dir(tmp_path):
    root = make_colour_dataset(tmp_path / "train", per_class=3)
    val = make_colour_dataset(tmp_path / "val", per_class=2, seed=9, classes=["red", "blue"])
    (val / "purple").mkdir()
    Image.new("RGB", (8, 8), "purple").save(val / "purple" / "p.png")
    idx = scan(cfg(root, val_dir=str(val), val_split=0.5))
    assert all(e.split == TRAIN for e in idx.files if e.source == "train_dir")
    assert sorted(e.path for e in idx.files if e.source == "val_dir") == sorted(
        f"{c}/{c}_{i:03d}.png" for c in ("red", "blue") for i in range(2))
    assert any("purple" in s["path"] for s in idx.skipped)
    assert idx.counts()["green"] == {TRAIN: 3, VAL: 0}


def test_symlinked_folder_followed_once_and_loops_survive(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=2, classes=["red", "blue"])
    extra = make_colour_dataset(tmp_path / "elsewhere", per_class=2, seed=4, classes=["red"])
    (root / "red" / "linked").symlink_to(extra / "red", target_is_directory=True)
    (root / "blue" / "loop").symlink_to(root / "blue", target_is_directory=True)
    idx = scan(cfg(root, val_split=0.0))
    paths = [e.path for e in idx.files]
    assert sum(p.startswith("red/linked/") for p in paths) == 2
    assert sum(p.startswith("blue/") for p in paths) == 2


def test_scan_never_modifies_the_dataset(tmp_path):
    root = make_colour_dataset(tmp_path / "d", per_class=4)
    (root / "red" / "bad.jpg").write_bytes(b"junk")
    before = tree_hashes(root)
    scan(cfg(root))
    assert tree_hashes(root) == before
