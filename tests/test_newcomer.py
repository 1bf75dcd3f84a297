"""What a newcomer types first, answered as they would expect (issue 17's friction list)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


def test_a_folder_as_the_first_train_argument_is_the_dataset(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    # `vgg train DIR` (the yolo/fastai habit): taken as data.train_dir, so the next problem reported is the
    # folder's own (no class folders), not the shape of the command line
    code, _, err = run_cli(["train", str(photos), f"output.dir={tmp_path / 'runs'}"])
    assert code == 65, err
    assert "not key=value" not in err and "photos" in err
    code, out, err = run_cli(["config", "show", f"data.train_dir={photos}"])
    assert code == 0 and f"train_dir: {photos}" in out


def test_a_folder_that_does_not_exist_is_not_found(tmp_path):
    # a mistyped dataset folder is "does not exist" (66), not a lesson on KEY=VALUE; a bare config key keeps it
    code, _, err = run_cli(["train", "no/such/photos", f"output.dir={tmp_path / 'runs'}"])
    assert code == 66, err
    assert err.strip().splitlines() == ["error: data.train_dir 'no/such/photos' does not exist; set "
                                        "data.train_dir=FOLDER to a folder with one subfolder per class"]
    for bare, key in (("train.epochs", "train.epochs"), ("epochs", "train.epochs"), ("imgsz", "data.image_size")):
        code, _, err = run_cli(["train", bare])
        assert code == 78 and f"is not key=value; write e.g. {key}=VALUE" in err, err


def test_a_path_with_a_line_break_stays_one_path(tmp_path):
    """A shell's $'...' path with a newline (or YAML's special characters) reaches data.train_dir as it is: not
    folded into a space, not parsed as YAML."""
    import yaml

    for name in ("we ird\nname", "a: b #c", "[x]"):
        folder = tmp_path / name / "data"
        folder.mkdir(parents=True)
        for args in (["config", "show", str(folder)], ["config", "show", f"data.train_dir={folder}"]):
            if name != "we ird\nname" and "=" in args[-1]:
                continue  # typed as KEY=VALUE, YAML's own rules apply (quote it); only the line break is literal
            code, out, err = run_cli(args)
            assert code == 0, err
            assert yaml.safe_load(out)["data"]["train_dir"] == str(folder)


def test_another_tools_command_line_is_answered_in_one_error(tmp_path):
    """`model=vgg16 data=DIR epochs=3 imgsz=64` (Ultralytics): every foreign key in one line, with the command
    to copy; `--epochs 3` names the KEY=VALUE to write."""
    code, _, err = run_cli(["train", "model=vgg16", f"data={tmp_path}", "epochs=3", "imgsz=64"])
    assert code == 78 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: 4 overrides are wrong: (1) ")
    assert f"all together: model.arch=vgg16 data.train_dir={tmp_path} train.epochs=3 data.image_size=64" in err
    code, _, err = run_cli(["train", "--epochs", "3"])
    assert code == 64 and "write train.epochs=3" in err, err
    code, _, err = run_cli(["train", "--lr=0.01"])
    assert code == 64 and "write train.optimizer.learning_rate=0.01" in err, err
    code, _, err = run_cli(["config", "show", "model.freeze_blocks=1,2,3"])
    assert code == 78 and "write 'model.freeze_blocks=[1,2,3]'" in err, err


def test_export_without_a_format_is_one_line(tmp_path):
    code, out, err = run_cli(["export", "--runs-dir", str(tmp_path)])
    assert code == 64 and out == ""
    assert err.strip().splitlines() == ["error: vgg export needs --format saved_model, tflite or onnx (e.g. vgg "
                                        "export --format onnx)"]


def test_predict_help_names_the_default_model_it_uses():
    code, out, _ = run_cli(["predict", "--help"])
    assert code == 0 and "Default: production, else latest." in out and "<runs-dir>/latest" not in out


def test_a_wrong_layout_is_reported_before_the_imagenet_download(tmp_path):
    """Offline, with the default weights: the dataset's problem comes first, in one line, not the download's."""
    from PIL import Image

    one = tmp_path / "data" / "cats"
    one.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a.png")
    code, _, err = run_cli(["train", f"data.train_dir={tmp_path / 'data'}", f"output.dir={tmp_path / 'runs'}"])
    assert code == 65 and "ImageNet" not in err
    assert "has 1 class folder (cats); at least 2 are needed" in err


@pytest.mark.slow
def test_a_reader_that_stops_early_does_not_change_the_exit_code(tmp_path, colour_data):
    """`vgg train ... 2>&1 | head -2`: head exits after two lines; the run still finishes, is promoted, and vgg
    exits 0 without a traceback or 'Logging error' report."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import TRAIN_ARGS

    root = Path(__file__).resolve().parent.parent
    runs = tmp_path / "runs"
    args = " ".join(["train", f"data.train_dir={colour_data}", f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=2",
                     "promote.min_accuracy=0", "output.tensorboard=false"])
    script = f"{sys.executable} -m vgg_cli {args} 2>&1 | head -2; echo \"vgg exit ${{PIPESTATUS[0]}}\""
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600, cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)})
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "vgg exit 0", p.stdout + p.stderr
    assert (runs / "production").resolve().parent == runs.resolve()


@pytest.mark.parametrize("given, write", [
    ("model=vgg19", "model.arch=vgg19"), ("data=digits", "data.train_dir=digits"), ("epochs=3", "train.epochs=3"),
    ("imgsz=64", "data.image_size=64"), ("batch=8", "train.batch_size=8"),
    ("lr0=0.01", "train.optimizer.learning_rate=0.01"), ("patience=3", "train.early_stopping_patience=3"),
    ("device=0", "train.gpus=... (device=cpu is train.gpus=[]"), ("project=out", "output.dir=out")])
def test_ultralytics_habits_get_the_vgg_key_to_write(given, write):
    """`vgg train model=vgg19 data=digits epochs=3` (yolo's habit): one line naming vgg's key, before anything
    loads; the same in a config file."""
    code, out, err = run_cli(["config", "show", given])
    assert code == 78 and err.count("\n") == 1 and f"write {write}" in err, err


def test_tensorflow_retracing_paragraphs_are_dropped_and_other_warnings_kept():
    import logging

    from vgg_cli.platform.backend import _quiet_retracing, load_frameworks

    load_frameworks()
    tf_log = logging.getLogger("tensorflow")
    assert _quiet_retracing in tf_log.filters
    noise = logging.LogRecord("tensorflow", logging.WARNING, "x", 1, "5 out of the last 8 calls to <function> "
                              "triggered tf.function retracing. Tracing is expensive", None, None)
    kept = logging.LogRecord("tensorflow", logging.WARNING, "x", 1, "something else", None, None)
    assert not tf_log.filter(noise) and tf_log.filter(kept)


def test_summary_marks_trainable_what_trains():
    """The default freeze trains the head only: the backbone as a whole and the calibration layer say N."""
    code, out, err = run_cli(["summary", "model.weights=none", "data.image_size=32"])
    assert code == 0, err
    rows = {line.split("│")[1].strip(): line.split("│")[-2].strip() for line in out.splitlines()
            if line.startswith("│") and line.count("│") >= 5 and line.split("│")[1].strip()}
    assert rows["vgg16 (Functional)"] == "N" and rows["probabilities"] == "N"
    assert rows["head_logits (Dense)"] == "Y"
    code, out, err = run_cli(["summary", "model.weights=none", "data.image_size=32", "model.freeze_blocks=[1,2,3]"])
    rows = {line.split("│")[1].strip(): line.split("│")[-2].strip() for line in out.splitlines()
            if line.startswith("│") and line.count("│") >= 5 and line.split("│")[1].strip()}
    assert code == 0 and rows["vgg16 (Functional)"] == "Y"  # blocks 4-5 train
