"""Dataset layouts users bring (issue 25): split folders (train/ val/ test/, as Ultralytics, ImageNet and Kaggle lay
them out) are used as such; mixed or broken layouts are one line before the framework loads; the end of a run
prints its results."""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TRAIN_ARGS, make_colour_dataset, run_cli

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import atexit, sys; atexit.register(lambda: print('keras imported' if 'keras' in sys.modules else "
         "'keras not imported', file=sys.stderr)); from vgg_cli.cli.main import main; main(sys.argv[1:])")


def split_dataset(root: Path, val: str = "val") -> Path:
    make_colour_dataset(root / "train", per_class=8, seed=1)
    make_colour_dataset(root / val, per_class=3, seed=2)
    make_colour_dataset(root / "test", per_class=3, seed=3)
    return root


def vgg_probe(*args: str, cwd: Path = ROOT):
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("val", ["val", "valid", "validation"])
def test_check_reads_split_folders_as_splits(tmp_path, val):
    data = split_dataset(tmp_path / "DATA", val)
    code, out, err = run_cli(["check", str(data), f"output.dir={tmp_path / 'runs'}", "--json"])
    r = json.loads(out)
    assert r["layout"] == "splits" and r["classes"] == ["blue", "green", "red"], err
    assert r["train_dir"] == str((data / "train").resolve()) and r["val_dir"] == str((data / val).resolve())
    assert {c: (v["train"], v["val"]) for c, v in r["counts"].items()} == {c: (8, 3) for c in ("blue", "green", "red")}
    assert r["test_dir"] == str(data / "test")
    code, out, err = run_cli(["check", str(data), f"output.dir={tmp_path / 'runs'}"])
    assert "layout: split folders: train" in out and "train" not in [line.split()[0] for line in out.splitlines()
                                                                        if line.startswith("  ")][1:]
    assert code == 0 and r["test"]["images"] == 9 and r["test"]["errors"] == []


def test_check_reads_the_test_folder_too(tmp_path):
    """A corrupt file (or a class training lacks) in test/ is an error of `vgg check`, named: not exit 0."""
    data = split_dataset(tmp_path / "DATA")
    (data / "test" / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "test" / "purple").mkdir()
    shutil.copy(next((data / "test" / "red").glob("*_000.png")), data / "test" / "purple" / "p.png")
    code, out, err = run_cli(["check", str(data), f"output.dir={tmp_path / 'runs'}"])
    assert code == 65, out + err
    assert "unreadable (test): red/broken.png: " in out
    assert "1 unreadable file(s) in the test folder" in out and "test class folder(s) ['purple']" in out


@pytest.mark.parametrize("make, message", [
    (lambda d: (make_colour_dataset(d / "train", 2), make_colour_dataset(d, 2)), "mixes split folders"),
    (lambda d: (make_colour_dataset(d / "val", 2), make_colour_dataset(d / "test", 2)), "but no train/"),
    (lambda d: (make_colour_dataset(d / "train", 2), make_colour_dataset(d / "val", 2),
                make_colour_dataset(d / "valid", 2)), "has 2 val folders"),
    (lambda d: make_colour_dataset(d, 2, classes=["red"]), "has 1 class folder"),
    (lambda d: [(d / f"{i}.png").write_bytes(b"x") for i in range(3)] and d, "has no class subfolders"),
    (lambda d: (make_colour_dataset(d, 2, classes=["red"]), (d / "blue").mkdir(), (d / "blue" / "notes.txt").touch()),
     "class folder(s) ['blue'] hold no image files"),  # the empty class is named, not the good one
])
def test_bad_layouts_are_one_line_before_the_framework_loads(tmp_path, make, message):
    data = tmp_path / "DATA"
    data.mkdir()
    make(data)
    r = vgg_probe("train", str(data), f"output.dir={tmp_path / 'runs'}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 65 and message in lines[0] and lines[1:] == ["keras not imported"], r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_training_on_split_folders_evaluates_test_and_prints_the_results(tmp_path):
    data = split_dataset(tmp_path / "DATA")
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", str(data), f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=3",
                              "promote.min_accuracy=0"])
    assert code == 0, err
    run = Path(out.strip().splitlines()[-1])
    assert run.name.endswith("-DATA")  # named after the dataset, not its train/ folder
    manifest = json.loads((run / "data.json").read_text())
    assert manifest["train_dir"] == str((data / "train").resolve())
    assert manifest["val_dir"] == str((data / "val").resolve())
    test = json.loads((run / "evaluation" / "test" / "report.json").read_text())
    val = json.loads((run / "evaluation" / "val" / "report.json").read_text())
    assert test["images"] == 9 and val["images"] == 9
    table = [line for line in err.splitlines() if line.startswith(("validation ", "test "))]
    assert table[0].startswith("validation      9 images  accuracy ") and f"{val['accuracy']:.4f}" in table[0]
    assert table[1].startswith("test            9 images  accuracy ") and f"{test['accuracy']:.4f}" in table[1]
    assert "worst: " in table[0] and f"report: {run / 'report.html'}" in err
    page = (run / "report.html").read_text()
    assert page.count("<h2>Evaluation on the") == 2 and str(data / "test") in page  # validation and test
    promotion = json.loads((run / "summary.json").read_text())["promotion"]
    assert promotion["evaluated_on"]["images"] == 9  # the validation split decides, not test/
    code, out, err = run_cli(["train", str(data), f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=1",
                              "promote.min_accuracy=0", "--json"])
    j = json.loads(out)
    assert set(j["results"]) == {"val", "test"} and j["report"].endswith("report.html")
    worst = j["results"]["val"]["worst_classes"]
    assert j["results"]["test"]["images"] == 9 and len(worst) <= 3
    assert all(c["recall"] < 1.0 for c in worst)  # a class the model gets right every time is not among the worst
    per_class = json.loads((Path(j["run"]) / "evaluation" / "val" / "report.json").read_text())["per_class"]
    assert len(worst) == min(3, sum(c["recall"] is not None and c["recall"] < 1.0 for c in per_class))
