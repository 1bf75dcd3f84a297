"""Datasets that change or misbehave under a run: file names that are not UTF-8, feature-cache entries removed
while training reads them, images removed while training decodes them. Each ends in a run or in one line with a
documented exit code, never a traceback, and the dataset is only read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE, make_colour_dataset, run_cli, start, tree_hashes, vgg, wait_for

FAST = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[16]", "model.head.dropout=0.0",
        "train.batch_size=8", "train.optimizer.learning_rate=0.003", "train.early_stopping_patience=0",
        "output.tensorboard=false", "output.report=false", "promote.min_accuracy=0"]
LATIN1 = b"\xe9t\xe9.png"  # "été.png" in Latin-1: not UTF-8
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}  # file names decoded as ASCII


def finish(proc: subprocess.Popen, lines: list[str]) -> tuple[int, str]:
    _, rest = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + rest


def copy_as(src: Path, folder: Path, name: bytes) -> None:
    """Copy an image to a file whose name is raw bytes (what a Latin-1 system or an old archive leaves)."""
    os.makedirs(os.fsencode(folder), exist_ok=True)
    with open(os.fsencode(folder) + b"/" + name, "wb") as f:
        f.write(src.read_bytes())


def run_dir_of(lines: list[str]) -> Path:
    return Path(next(line for line in lines if line.startswith("run directory ")).split(" ", 2)[2].strip())


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def metrics_rows(run: Path) -> int:
    return len((run / "metrics.csv").read_text().strip().splitlines()) - 1


# ------------------------------------------------------------------------------ file names that are not UTF-8


@pytest.fixture
def latin1_data(tmp_path) -> Path:
    data = make_colour_dataset(tmp_path / "photos", per_class=8, seed=3)
    red = data / "red" / "red_000.png"
    copy_as(red, data / "red", LATIN1)  # a file
    copy_as(red, data / "blue" / os.fsdecode(b"sub\xff"), b"b.png")  # a file below a folder with such a name
    copy_as(red, Path(os.fsdecode(os.fsencode(data) + b"/caf\xe9")), b"a.png")  # a class folder with such a name
    shutil.copy(red, data / "red" / "rötlich.png")  # a UTF-8 name: used like any other
    return data


def test_split_hashes_the_names_bytes_whatever_the_locale(tmp_path):
    from vgg_cli.data.scan import SPLIT_SALT, split_value

    def expected(raw: bytes) -> float:
        return int.from_bytes(hashlib.sha1(SPLIT_SALT + raw).digest()[:8], "big") / 2**64

    assert split_value(os.fsdecode(b"red/" + LATIN1)) == expected(b"red/" + LATIN1)
    assert split_value("red/rötlich.png") == expected("red/rötlich.png".encode())  # what it always was: no move
    folder = tmp_path / "names"
    copy_as(Path(__file__), folder, LATIN1)
    copy_as(Path(__file__), folder, "rötlich.png".encode())
    probe = ("import json, os, sys; from vgg_cli.data.scan import split_value; "
             "print(json.dumps(sorted([os.fsencode(n).hex(), split_value(n)] for n in os.listdir(sys.argv[1]))))")
    values = {}
    for env in ({}, ASCII_LOCALE):
        r = subprocess.run([sys.executable, "-c", probe, str(folder)], capture_output=True, text=True,
                           env={**os.environ, **env}, check=True)
        values[tuple(env)] = json.loads(r.stdout)
    assert values[()] == values[tuple(ASCII_LOCALE)]
    assert sorted(v for _, v in values[()]) == sorted([expected(LATIN1), expected("rötlich.png".encode())])


def test_check_lists_names_that_are_not_utf8_and_does_not_crash(latin1_data):
    before = tree_hashes(latin1_data)
    code, out, err = run_cli(["check", str(latin1_data)])
    assert code == 65, err  # errors found: files skipped
    assert "Traceback" not in err and "Traceback" not in out
    assert "unreadable: red/\\xe9t\\xe9.png: name is not valid UTF-8" in out
    assert "unreadable: blue/sub\\xff/b.png: name is not valid UTF-8" in out
    assert "left out: class 'caf\\\\xe9': folder name is not valid UTF-8" in out
    code, out, _ = run_cli(["check", str(latin1_data), "--json"])
    report = json.loads(out)
    assert sum(report["counts"]["red"].values()) == 9  # rötlich.png is used
    assert {s["path"] for s in report["skipped"]} == {"red/\\xe9t\\xe9.png", "blue/sub\\xff/b.png"}
    assert tree_hashes(latin1_data) == before


@pytest.mark.slow
def test_train_skips_names_that_are_not_utf8_and_data_json_lists_them(latin1_data, tmp_path):
    before = tree_hashes(latin1_data)
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={latin1_data}", f"output.dir={runs}", *FAST,
                              "train.epochs=2"])
    assert code in (0, 3), err
    manifest = json.loads((runs / "latest" / "data.json").read_bytes().decode("utf-8"))  # strict UTF-8
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"red/\\xe9t\\xe9.png", "blue/sub\\xff/b.png"}
    assert all("not valid UTF-8" in why and "UTF-8 name" in why for why in skipped.values())
    [excluded] = manifest["excluded_classes"]
    assert excluded["class"] == "caf\\xe9" and excluded["reason"].startswith("folder name is not valid UTF-8")
    assert "red/rötlich.png" in {f["path"] for f in manifest["files"]}
    assert manifest["classes"] == ["blue", "green", "red"]
    assert tree_hashes(latin1_data) == before


def test_a_dataset_folder_whose_path_is_not_utf8_is_one_line(tmp_path):
    from vgg_cli.data.scan import require_dir
    from vgg_cli.errors import DataError

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    with pytest.raises(DataError) as err:
        require_dir(str(folder / "train"), "DATA_DIR")
    assert str(err.value).startswith(f"DATA_DIR '{tmp_path}/caf\\xe9/train': a folder on this path has a name "
                                     f"that is not UTF-8 text")
    assert err.value.exit_code == 65


def test_check_under_an_ascii_locale_names_the_locale(latin1_data):
    r = subprocess.run(vgg("check", str(latin1_data), "--json"), capture_output=True, text=True,
                       env={**os.environ, **ASCII_LOCALE})
    assert r.returncode == 65, r.stderr
    assert "Traceback" not in r.stderr
    skipped = {s["path"]: s["reason"] for s in json.loads(r.stdout)["skipped"]}
    assert "this process decodes file names as ascii" in skipped["red/rötlich.png"]  # UTF-8, not decodable here
    assert "not valid UTF-8" in skipped["red/\\xe9t\\xe9.png"]


# --------------------------------------------------------------------- feature-cache entries removed mid-run


def _tiny_images(tmp_path, n: int = 5) -> list[str]:
    data = make_colour_dataset(tmp_path / "imgs", per_class=n, seed=5, classes=["red"])
    return sorted(str(p) for p in (data / "red").glob("*.png"))


def _source(tmp_path, paths: list[str]):
    """A FeatureSource over ``paths`` (all on disk: no RAM), filled by a stand-in prefix (a numpy function)."""
    from vgg_cli.data.features import FeatureSource, FeatureStore

    def predict(x):
        return x.astype(np.float32).mean(axis=(1, 2)) / 255.0  # (B, 3): depends on each image

    shas = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]
    store = FeatureStore(tmp_path / "cache", "key", (3,), np.float32)
    source = FeatureSource(store, shas, ram_bytes=0)
    source.fill(predict, paths, 16, batch_size=2)
    return source, store, shas


def test_feature_entries_removed_after_fill_are_recomputed_and_saved(tmp_path):
    paths = _tiny_images(tmp_path)
    source, store, shas = _source(tmp_path, paths)
    idx = np.arange(len(paths))
    want = source.get(idx).copy()
    shutil.rmtree(store.dir)  # what another run's prune_cache, or a person, does
    assert source.get(idx) == pytest.approx(want)
    assert source.recomputed == len(paths) and all(store.valid(s) for s in shas)
    assert "recomputed after they were removed during training" in source.describe()
    store.path(shas[1]).write_bytes(b"damaged")
    assert source.get(idx) == pytest.approx(want)
    assert source.recomputed == len(paths) + 1 and source.failure is None


def test_feature_entry_and_its_image_both_gone_is_one_error_naming_the_image(tmp_path):
    from vgg_cli.data.pipeline import raise_source_failure
    from vgg_cli.errors import NoInputError

    paths = _tiny_images(tmp_path)
    source, store, shas = _source(tmp_path, paths)
    store.path(shas[2]).unlink()
    os.unlink(paths[2])
    with pytest.raises(NoInputError) as err:
        source.get(np.arange(len(paths)))
    assert paths[2] in str(err.value) and "vgg train --resume" in str(err.value)
    with pytest.raises(NoInputError):
        raise_source_failure(source)


@pytest.mark.slow
def test_feature_cache_pruned_by_another_job_mid_run_is_recomputed(tmp_path):
    from vgg_cli.data.features import prune_cache

    data = make_colour_dataset(tmp_path / "photos", per_class=8, seed=7)
    runs = tmp_path / "runs"
    epochs = 12
    proc = start(["train", f"data.train_dir={data}", f"output.dir={runs}", *FAST, f"train.epochs={epochs}",
                  "cache.ram_mb=0"])
    lines = wait_for(proc, "epoch 1/")
    removed = prune_cache(runs / ".cache" / "features", 0)  # another job, cache.disk_mb=0: nothing of ours kept
    code, err = finish(proc, lines)
    assert removed == 24
    assert code in (0, 3), err
    assert "Traceback" not in err
    assert "feature cache: entries of this run were removed" in err and "recomputing them" in err
    assert metrics_rows(run_dir_of(lines)) == epochs
    assert len(list((runs / ".cache" / "features").glob("*/*/*.npy"))) == 24  # saved again


# ----------------------------------------------------------------------------------- images removed mid-run


def test_image_source_names_a_removed_or_changed_image_with_its_exit_code(tmp_path):
    from vgg_cli.data.pipeline import ImageSource, raise_source_failure
    from vgg_cli.errors import DataError, NoInputError

    paths = _tiny_images(tmp_path)
    source = ImageSource(paths, 16)
    try:
        assert source.get(np.arange(5)).shape == (5, 16, 16, 3)
        Path(paths[3]).write_bytes(b"not an image any more")
        with pytest.raises(DataError) as err:
            source.get(np.arange(5))
        assert err.value.exit_code == 65 and paths[3] in str(err.value) and "changed during the run" in str(err.value)
        os.unlink(paths[1])
        source.failure = None
        with pytest.raises(NoInputError) as err:
            source.get(np.array([0, 1]))
        assert err.value.exit_code == 66 and "was removed during the run" in str(err.value)
        assert "vgg train --resume" in str(err.value)
        with pytest.raises(NoInputError):
            raise_source_failure(source)
    finally:
        source.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_image_removed_mid_run_is_one_line_and_resume_continues_once_it_is_back(tmp_path, backend):
    pytest.importorskip(backend)
    data = make_colour_dataset(tmp_path / "photos", per_class=6, seed=7)
    runs = tmp_path / "runs"
    epochs = 8
    proc = start(["train", f"data.train_dir={data}", f"output.dir={runs}", *FAST, f"train.epochs={epochs}",
                  "cache.features=off", "cache.images=off"], KERAS_BACKEND=backend)
    lines = wait_for(proc, "epoch 1/")
    run = run_dir_of(lines)
    manifest = json.loads((run / "data.json").read_text())
    victim = data / next(f["path"] for f in manifest["files"] if f["split"] == "train")
    away = tmp_path / "away.png"
    shutil.move(victim, away)  # the user's doing, while the run decodes every image every epoch
    code, err = finish(proc, lines)
    assert "Traceback" not in err
    assert code == 66, err
    assert last_line(err) == (f"error: image {str(victim)!r} was removed during the run (after the dataset scan, "
                              f"which listed it in the run's data.json); the epochs finished so far are saved: put it "
                              f"back and continue with `vgg train --resume`, or start a new run (`vgg train`), whose "
                              f"scan leaves it out")
    done = metrics_rows(run)
    assert 1 <= done < epochs
    shutil.move(away, victim)
    r = subprocess.run(vgg("train", "--resume", f"output.dir={runs}"), capture_output=True, text=True,
                       env={**os.environ, "KERAS_BACKEND": backend})
    assert r.returncode in (0, 3), r.stderr
    assert metrics_rows(run) == epochs and (runs / "latest").resolve() == run.resolve()
