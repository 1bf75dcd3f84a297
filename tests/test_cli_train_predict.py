"""`vgg train` then `vgg predict` through the real CLI entry point, checking files on disk and the numbers."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import COLOURS, SIZE, TRAIN_ARGS, colour_image, run_cli, tree_hashes

CLASSES = sorted(COLOURS)


def truth(path: str) -> str:
    return Path(path).parent.name


# ------------------------------------------------------------------------------------------------ train


def _tensorboard_scalars(root) -> dict:
    import tensorflow as tf

    out: dict = {}
    for f in sorted(root.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for v in event.summary.value:
                out.setdefault(f.parent.name, {}).setdefault(v.tag, []).append(
                    (event.step, float(tf.make_ndarray(v.tensor))))
    return out


@pytest.mark.slow
def test_train_prints_only_the_run_dir_and_writes_every_artifact(trained_run):
    run = trained_run["run_dir"]
    assert trained_run["stdout"].strip() == str(run)
    for rel in ("config.yaml", "classes.json", "data.json", "model/best.keras", "model/last.keras", "metrics.csv",
                "summary.json", "train.log"):
        assert (run / rel).is_file(), rel
    scalars = _tensorboard_scalars(run / "tensorboard")
    epochs = len((run / "metrics.csv").read_text().splitlines()) - 1
    for split in ("train", "validation"):
        for name in ("epoch_loss", "epoch_accuracy"):
            assert [step for step, _ in scalars[split][name]] == list(range(epochs)), (split, name)
    rows = (run / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    last_val_loss = float(rows[-1].split(",")[head.index("val_loss")])
    assert abs(scalars["validation"]["epoch_loss"][-1][1] - last_val_loss) < 1e-5
    leftovers = [p.name for p in run.rglob("*") if ".tmp" in p.name]
    assert leftovers == []  # every artifact renamed into place
    umask = os.umask(0o022)
    os.umask(umask)
    for rel in ("config.yaml", "summary.json", "metrics.csv", "model/best.keras", "model/last.keras"):
        assert stat.S_IMODE((run / rel).stat().st_mode) == 0o666 & ~umask, rel  # not mkstemp's 0600
    latest = trained_run["runs"] / "latest"
    assert latest.is_symlink() and latest.resolve() == run.resolve()
    assert not Path(str(latest.readlink())).is_absolute()  # relative: the runs folder can move


def test_run_config_is_the_resolved_config(trained_run):
    cfg = yaml.safe_load((trained_run["run_dir"] / "config.yaml").read_text())
    assert cfg["data"]["train_dir"] == str(trained_run["data"])
    assert cfg["data"]["image_size"] == SIZE and cfg["train"]["epochs"] == 8 and cfg["model"]["head"]["dense"] == [32]
    assert cfg["model"]["freeze_blocks"] == [1, 2, 3, 4, 5]  # default kept


def test_manifest_and_classes(trained_run):
    run = trained_run["run_dir"]
    assert json.loads((run / "classes.json").read_text()) == CLASSES
    data = json.loads((run / "data.json").read_text())
    assert len(data["files"]) == 36 and data["skipped"] == [] and len(data["fingerprint"]) == 64
    for c in CLASSES:
        assert data["counts"][c]["train"] + data["counts"][c]["val"] == 12 and data["counts"][c]["val"] >= 1
    assert {f["class"] for f in data["files"]} == set(CLASSES)


def test_metrics_csv_and_summary_agree(trained_run):
    run = trained_run["run_dir"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    summary = json.loads((run / "summary.json").read_text())
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9)) and summary["epochs_run"] == 8
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "images_per_sec"} <= set(rows[0])
    assert "top5_accuracy" not in rows[0]  # only 3 classes
    best = max(rows, key=lambda r: (float(r["val_accuracy"]), -float(r["val_loss"])))
    assert summary["best"]["epoch"] == int(best["epoch"]) and summary["monitor"] == "val_accuracy"
    assert summary["final"]["epoch"] == 8 and summary["status"] == "finished"
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learned something
    assert summary["best"]["val_accuracy"] >= 0.9
    assert summary["classes"] == CLASSES and summary["images"]["train"] + summary["images"]["val"] == 36
    assert summary["weights"] == "random (He-normal)" and summary["device"]["precision"] == "float32"
    assert summary["params"]["trainable"] == 512 * 32 + 32 + 32 * 3 + 3  # head only: every block frozen
    assert {"keras", "tensorflow", "python", "vgg"} <= set(summary["versions"])
    assert 100 < summary["timings"]["peak_rss_mib"] < 24 * 1024  # TensorFlow and VGG16 alone take >100 MiB


def test_progress_is_one_plain_line_per_epoch_off_a_terminal(trained_run):
    err = trained_run["stderr"]
    assert all(f"epoch {i}/8" in err for i in range(1, 9))
    assert "\r" not in err  # no progress bar in logs
    log = (trained_run["run_dir"] / "train.log").read_text()
    assert "epoch 8/8" in log and "dataset" in log
    # the end of the run (finished by vgg_cli.job.lifecycle, after training) is in the run's log too
    assert "evaluated on the validation split: accuracy" in log and "promoted to production:" in log


def test_training_never_touches_the_dataset(trained_run):
    assert tree_hashes(trained_run["data"]) == trained_run["data_hashes_before"]


def test_best_checkpoint_is_the_best_epoch(trained_run):
    """model/best.keras reproduces the best epoch's val accuracy on the validation files."""
    from vgg_cli.model.load import load_model

    run = trained_run["run_dir"]
    data = json.loads((run / "data.json").read_text())
    val = [f for f in data["files"] if f["split"] == "val"]
    model = load_model(run / "model" / "best.keras")
    from vgg_cli.data.images import load_image

    x = np.stack([load_image(Path(data["train_dir"]) / f["path"], SIZE) for f in val]).astype("float32")
    acc = float(np.mean(np.argmax(model.predict_on_batch(x), axis=1) == [f["label"] for f in val]))
    summary = json.loads((run / "summary.json").read_text())
    assert acc == pytest.approx(summary["best"]["val_accuracy"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ predict


def test_predict_table_labels_holdout_images(trained_run, colour_holdout):
    code, out, err = run_cli(["predict", str(colour_holdout), "--runs-dir", str(trained_run["runs"])])
    assert code == 0, err
    production = (trained_run["runs"] / "production").resolve()
    assert f"model: {production / 'model' / 'best.keras'}" in err  # which run answered, without -v
    lines = out.strip().splitlines()
    assert lines[0].split() == ["path", "prediction"] and len(lines) == 13
    # (an image beyond the run's out-of-distribution threshold reads "unknown (...; best guess CLASS p)")
    correct = sum(line.split()[1 if "best guess" not in line else line.split().index("guess") + 1] ==
                  truth(line.split()[0]) for line in lines[1:])
    assert correct >= 11, out


def test_predict_json_lines_for_jq(trained_run, colour_holdout):
    code, out, _ = run_cli(["predict", str(colour_holdout), "--run", str(trained_run["run_dir"]), "--format",
                            "json", "--top-k", "2"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 12
    for r in rows:
        assert set(r) == {"path", "answer", "probability", "top_k", "predicted", "unknown", "unknown_reason",
                          "ood_score"}  # "label" names a ranked class only (top_k, CSV label_i); "answer" the answer
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert r["predicted"] == r["top_k"][0]["label"] and r["predicted"] in CLASSES
        assert r["answer"] == ("unknown" if r["unknown"] else r["predicted"])
    assert sum(r["predicted"] == truth(r["path"]) for r in rows) >= 11
    # top-k larger than the class count is capped at the class count
    code, out, _ = run_cli(["predict", str(colour_holdout / "red"), "--run", str(trained_run["run_dir"]),
                            "--format", "json", "--top-k", "10"])
    first = json.loads(out.splitlines()[0])
    assert len(first["top_k"]) == 3
    assert sum(t["probability"] for t in first["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_csv(trained_run, colour_holdout):
    code, out, _ = run_cli(["predict", str(colour_holdout / "blue"), "--runs-dir", str(trained_run["runs"]),
                            "--format", "csv", "-k", "3"])
    assert code == 0
    rows = list(csv.DictReader(out.splitlines()))
    assert list(rows[0]) == ["path", "label_1", "probability_1", "label_2", "probability_2", "label_3",
                             "probability_3", "error", "answer", "unknown", "ood_score"]
    assert len(rows) == 4 and sum(r["label_1"] == "blue" for r in rows) >= 3


def test_unreadable_files_get_their_own_rows_and_the_rule_is_the_same_for_predict_and_evaluate(trained_run, tmp_path):
    """A folder answered but for a few files: 0, each named on stderr and in its row; --strict: 65; none read: 65
    (66 when none exists). evaluate keeps the same rule (docs/reports.md)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    colour_image(COLOURS["red"], np.random.default_rng(1)).save(folder / "a_red.png")
    (folder / "b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    colour_image(COLOURS["green"], np.random.default_rng(2)).save(folder / "c_green.png")
    missing = tmp_path / "missing.png"
    args = ["predict", str(folder), str(missing), "--runs-dir", str(trained_run["runs"]), "--format", "json"]
    code, out, err = run_cli(args)
    assert code == 0, err
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert rows["a_red.png"]["answer"] == "red" and rows["c_green.png"]["answer"] == "green"
    assert "error" in rows["b_broken.jpg"] and rows["missing.png"]["error"] == "not found"
    last = err.strip().splitlines()[-1]
    assert last.startswith("warning: 2 of 4 input(s) could not be read (") and "b_broken.jpg" in last, err
    assert "missing.png" in last and last.endswith("the others were answered (exit 0; --strict makes it 65)")
    code, out, err = run_cli([*args, "--strict"])
    assert code == 65 and len(out.splitlines()) == 4 and "(--strict: exit 65)" in err
    code, _, err = run_cli(["predict", str(folder / "b_broken.jpg"), "--runs-dir", str(trained_run["runs"])])
    assert code == 65 and "none of the 1 input(s) could be read" in err
    code, _, err = run_cli(["predict", str(missing), "--runs-dir", str(trained_run["runs"])])
    assert code == 66
    labelled = tmp_path / "labelled"
    for name in ("red", "green"):
        (labelled / name).mkdir(parents=True)
        colour_image(COLOURS[name], np.random.default_rng(3)).save(labelled / name / "one.png")
    (labelled / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    ev = ["evaluate", "--runs-dir", str(trained_run["runs"]), str(labelled), "--out", str(tmp_path / "ev")]
    code, _, err = run_cli(ev)
    assert code == 0 and "1 of 3 input(s) could not be read" in err.strip().splitlines()[-1], err
    assert run_cli([*ev, "--strict"])[0] == 65


def test_predict_from_a_copied_run_directory_and_a_model_file(trained_run, colour_holdout, tmp_path):
    moved = tmp_path / "elsewhere" / "myrun"
    shutil.copytree(trained_run["run_dir"], moved)
    args = [str(colour_holdout / "green"), "--format", "json"]
    code1, out1, _ = run_cli(["predict", *args, "--run", str(moved)])
    code2, out2, _ = run_cli(["predict", *args, "--model", str(moved / "model" / "best.keras")])
    code3, out3, _ = run_cli(["predict", *args, "--run", trained_run["run_dir"].name, "--runs-dir",
                              str(trained_run["runs"])])
    assert code1 == code2 == code3 == 0 and out1 == out2 == out3


def test_predict_errors_are_one_line(tmp_path, trained_run):
    code, out, err = run_cli(["predict", str(tmp_path), "--runs-dir", str(tmp_path / "none")])
    assert code == 66 and err.strip().count("\n") == 0 and "no image files found" in err
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    code, _, err = run_cli(["predict", str(img), "--runs-dir", str(tmp_path / "none")])
    assert code == 66 and "no trained run found" in err and "vgg train" in err
    code, _, err = run_cli(["predict", str(img), "--run", "nope", "--runs-dir", str(trained_run["runs"])])
    assert code == 66 and "run 'nope' not found" in err
    code, _, err = run_cli(["predict", str(img), "--run", "a", "--model", "b"])
    assert code == 64
    code, out, err = run_cli(["predict", str(tmp_path / "gone.jpg"), "--runs-dir", str(trained_run["runs"])])
    assert code == 66 and "ERROR: not found" in out  # every input missing: 66, not 65


@pytest.mark.slow
def test_ctrl_c_leaves_a_usable_run_and_says_so(tmp_path, colour_data):
    """SIGINT after the first epoch: exit 75, one clear line, summary.json says interrupted, latest not moved."""
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vgg_cli", "train", f"data.train_dir={colour_data}",
                             f"output.dir={runs}", "output.name=r", *TRAIN_ARGS, "train.epochs=200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 1/200"):
            proc.send_signal(signal.SIGINT)
            break
    out, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 75, err
    assert out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training stopped by SIGINT after epoch ") and "last.keras" in last
    assert last.endswith(f"resume with: vgg train --resume {runs / 'r'}")
    assert err.count("training stopped by SIGINT") == 1  # once on the console (the error line), and in train.log
    run = runs / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_run"] >= 1
    assert (run / "model" / "last.keras").is_file() and (run / "model" / "best.keras").is_file()
    assert not (runs / "latest").exists()
    assert "stopped by SIGINT" in (run / "train.log").read_text()


# ------------------------------------------------------------------------------------------------ more training


def test_train_data_errors_exit_codes_and_leave_no_run(tmp_path):
    runs = tmp_path / "runs"
    code, _, err = run_cli(["train", f"data.train_dir={tmp_path / 'nope'}", f"output.dir={runs}"])
    assert code == 66 and "data.train_dir" in err and err.count("\n") == 1
    (tmp_path / "one" / "only").mkdir(parents=True)
    colour_image(COLOURS["red"], np.random.default_rng(0)).save(tmp_path / "one" / "only" / "x.png")
    code, _, err = run_cli(["train", f"data.train_dir={tmp_path / 'one'}", f"output.dir={runs}", "model.weights=none"])
    assert code == 65 and "at least 2 are needed" in err
    code, _, err = run_cli(["train", "train.epochs=0"])
    assert code == 78 and "train.epochs" in err
    assert not runs.exists() or [p.name for p in runs.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.slow
def test_reuse_a_run_as_backbone_weights_with_mixed_precision_and_top5(trained_run, tmp_path):
    """model.weights=RUN takes the backbone from a run; mixed precision's code path runs on CPU; >5 classes
    adds top-5 accuracy; a bad file is skipped and listed while training goes on."""
    rng = np.random.default_rng(5)
    data = tmp_path / "six"
    palette = {f"c{i}": (40 * i + 20, 255 - 40 * i, (97 * i) % 256) for i in range(6)}
    for name, rgb in palette.items():
        (data / name).mkdir(parents=True)
        for j in range(4):
            colour_image(rgb, rng).save(data / name / f"{j}.png")
    (data / "c0" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=reuse",
                              f"model.weights={trained_run['run_dir']}", "train.mixed_precision=on",
                              "data.image_size=32", "train.epochs=1", "train.batch_size=8",
                              "promote.min_accuracy=0",  # one epoch on 6 classes may not beat guessing yet
                              "output.report=false"])
    assert code == 0, err
    run = Path(out.strip())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights"].startswith(f"run {trained_run['run_dir'].resolve()}")
    assert summary["device"]["precision"] == "mixed_float16"
    assert "top5_accuracy" in summary["final"] and "val_top5_accuracy" in summary["final"]
    assert json.loads((run / "data.json").read_text())["skipped"][0]["path"] == "c0/truncated.png"
    assert "skipped c0/truncated.png" in err
    # the reused backbone is exactly the earlier run's
    from vgg_cli.model.load import load_model

    a = load_model(trained_run["run_dir"] / "model" / "best.keras").get_layer("vgg16")
    b = load_model(run / "model" / "last.keras").get_layer("vgg16")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)  # frozen: unchanged by a further epoch
    # an explicit existing run name is refused rather than overwritten
    code, _, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=reuse",
                            "model.weights=none", "data.image_size=32", "train.epochs=1"])
    assert code == 78 and "already exists" in err


def test_a_latin1_file_name_round_trips_through_json(trained_run, tmp_path):
    """A file name that is not UTF-8 comes out of --format json as \\udcXX escapes (valid UTF-8 text), so
    os.fsencode(row["path"]) is the file's name: the row maps back to its file (it was U+FFFD)."""
    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    colour_image(COLOURS["red"], np.random.default_rng(5)).save(folder / name)
    code, out, err = run_cli(["predict", str(folder), "--runs-dir", str(trained_run["runs"]), "--format", "json"])
    assert code == 0, err
    out.encode("utf-8")  # the line is UTF-8 text
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert os.fsencode(row["path"]) == os.fsencode(str(folder)) + b"/caf\xe9.png" and row["answer"] == "red"
    assert "\\udce9" in out and "\ufffd" not in out


def test_the_run_directory_on_stdout_is_absolute(tmp_path, colour_data, monkeypatch):
    """After a fresh train with a relative output.dir, as after --resume and --if-changed."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["train", str(colour_data), "output.dir=rel-runs", *TRAIN_ARGS, "train.epochs=1",
                              "output.report=false", "promote.min_accuracy=0"])
    assert code == 0, err
    printed = Path(out.strip().splitlines()[-1])
    assert printed.is_absolute() and printed.parent == (tmp_path / "rel-runs").resolve()
