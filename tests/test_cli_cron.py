"""Unattended retraining: kill and resume, signals, the runs-dir lock, --if-changed and --json, through real
processes and real signals."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE, epoch_done, make_colour_dataset, run_cli, start, tree_hashes, vgg, wait_for
from vgg_cli.runs.rundir import RunDir
from vgg_cli.training.checkpoints import TrainState, save_model, sync

FAST = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[16]", "model.head.dropout=0.0",
        "train.batch_size=8", "train.optimizer.learning_rate=0.003", "train.early_stopping_patience=0",
        "output.tensorboard=false",
        "promote.min_accuracy=0"]  # these tests are about the protocol, not about how good a 1-epoch model is
# For the tests that never read report.html or evaluation/: no evaluation of the new model at the end of training
# (a whole-network pass with Grad-CAM galleries), so each run ends seconds sooner.
NO_REPORT = [*FAST, "output.report=false"]


def sigkill_after(args: list[str], prefix: str) -> None:
    """Start ``vgg args``, SIGKILL it once stderr shows ``prefix``, and reap it."""
    proc = start(args)
    wait_for(proc, prefix)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def real_runs(runs: Path) -> list[Path]:
    return [p for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]


def rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def check_finished_run(run: Path, epochs: int) -> dict:
    """Each epoch exactly once; best.keras is the best row; the state and summary agree."""
    summary = json.loads((run / "summary.json").read_text())
    got = rows(run)
    assert [int(r["epoch"]) for r in got] == list(range(1, epochs + 1))
    assert summary["status"] == "finished" and summary["epochs_run"] == epochs
    best = max(got, key=lambda r: (float(r["val_accuracy"]), -float(r["val_loss"])))
    assert summary["best"]["epoch"] == int(best["epoch"])
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == epochs and state["best_epoch"] == int(best["epoch"])
    assert sorted(p.name for p in (run / "model" / "checkpoints").iterdir()) == [f"epoch-{epochs:04d}.keras"]
    # best.keras really is the best epoch's model: it reproduces that epoch's validation accuracy
    from vgg_cli.data.images import load_image
    from vgg_cli.model.load import load_model

    data = json.loads((run / "data.json").read_text())
    val = [f for f in data["files"] if f["split"] == "val"]
    x = np.stack([load_image(Path(data["train_dir"]) / f["path"], SIZE) for f in val]).astype("float32")
    pred = np.argmax(load_model(run / "model" / "best.keras").predict_on_batch(x), axis=1)
    assert float(np.mean(pred == [f["label"] for f in val])) == pytest.approx(float(best["val_accuracy"]), abs=1e-6)
    return summary


@pytest.fixture
def data(tmp_path) -> Path:
    return make_colour_dataset(tmp_path / "photos", per_class=10, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize(("after", "delay"), [(2, 0.0), (2, 0.4), (2, 1.2), (40, 0.0)])
def test_sigkill_at_any_moment_then_resume_finishes(tmp_path, data, after, delay):
    # An epoch on cached features, with its light checkpoint (the head's variables; epoch 1 writes the whole VGG16,
    # ~57 MB) written and committed, takes 0.03-0.4 s: 40 of them usually outlast the kill (at most 1.2 s after
    # epoch 2), which then lands in an epoch or its commit. On a fast machine it can land after the last epoch's
    # commit, before the summary (CI saw it at 1.2 s): that is a moment too, and the resume only finishes; the last
    # case kills there on purpose (after the last epoch's commit: best/last.keras, the summary and promotion left).
    epochs = 40
    runs = tmp_path / "runs"
    proc = start(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=night", *NO_REPORT,
                  f"train.epochs={epochs}"])
    wait_for(proc, epoch_done(after, epochs))  # committed; the kill lands in its bookkeeping or later
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run = runs / "night"
    assert not (run / "summary.json").exists() and not (runs / "latest").exists()
    # state.json is the commit point; metrics.csv follows it and may lag one epoch if the kill landed in between
    before = json.loads((run / "state.json").read_text())["epoch"]
    assert after <= before <= epochs and len(rows(run)) in (before - 1, before)
    code, out, err = run_cli(["train", "--resume", f"output.dir={runs}"])  # in this process: no second import
    assert code == 0, err
    assert out.strip() == str(run.resolve())
    assert "took over the lock of a vgg run that is no longer running" in err
    assert f"resuming night after epoch {before} of {epochs}" in err, err
    summary = check_finished_run(run, epochs)
    assert summary["resumed"][0]["after_epoch"] == before
    assert (runs / "latest").resolve() == run.resolve()


@pytest.mark.slow
def test_sigterm_stops_at_a_batch_boundary_and_resume_continues(tmp_path, data):
    runs = tmp_path / "runs"
    proc = start(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=t", *NO_REPORT,
                  "train.epochs=4", "--json"])
    wait_for(proc, epoch_done(1, 4))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    result = json.loads(out)
    assert result["status"] == "error" and result["exit_code"] == 75 and "stopped by SIGTERM" in result["error"]
    summary = json.loads((runs / "t" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGTERM"
    done = summary["epochs_run"]
    code, out, err = run_cli(["train", "--resume", str(runs / "t"), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "trained" and result["epochs_run"] == 4 and result["run"] == str((runs / "t").resolve())
    check_finished_run(runs / "t", 4)
    assert len(json.loads((runs / "t" / "summary.json").read_text())["resumed"]) == 1 and done >= 1
    # resuming a finished run is not an error: there is nothing to do
    code, out, err = run_cli(["train", "--resume", str(runs / "t"), "--json"])
    assert code == 0 and json.loads(out)["status"] == "nothing_to_do"


# A process that holds a runs folder's lock as `vgg train` does (vgg's own lock code), until it is killed.
HOLDER = """import sys, time
from vgg_cli.runs.root import RunsRoot
with RunsRoot(sys.argv[1]).lock("vgg train"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_second_run_on_the_same_runs_dir_exits_75_naming_the_holder(tmp_path, data):
    runs = tmp_path / "runs"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(runs)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        r = subprocess.run(vgg("train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 75, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith("error: another vgg run holds the lock on") and f"pid {holder.pid}" in line
        assert "started 20" in line and "on " in line
        assert time.monotonic() - t0 < 60  # at once (most of it is Python start-up), not after waiting
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert real_runs(runs) == []  # the refused run made nothing


@pytest.mark.slow
def test_if_changed_skips_unchanged_data_and_trains_on_new_images(tmp_path, data):
    runs = tmp_path / "runs"
    base = ["train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT, "train.epochs=1", "--if-changed",
            "--json"]
    # the first night finds the lock file of a run that died elsewhere: it takes the lock over and releases it
    runs.mkdir()
    (runs / ".lock.holder").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "2026-01-01T00:00:00",
                                            "command": "vgg train"}) + "\n")
    code, out, err = run_cli(base)
    assert code == 0 and json.loads(out)["status"] == "trained", err
    assert "took over the lock of a vgg run that is no longer running (pid 999999 on elsewhere" in err
    assert not (runs / ".lock.holder").exists()  # released cleanly
    first = Path(json.loads(out)["run"])
    first_split = {f["path"]: f["split"] for f in json.loads((first / "data.json").read_text())["files"]}
    hashes = tree_hashes(data)

    code, out, err = run_cli(base)
    result = json.loads(out)
    assert code == 0 and result["status"] == "nothing_to_do" and result["run"] == str(first)
    assert "nothing to do: the dataset and the config are unchanged" in err
    assert len(real_runs(runs)) == 1  # no new run

    code, out, _ = run_cli([*base[:-2], "train.optimizer.learning_rate=0.001", "--if-changed", "--json"])
    assert code in (0, 3) and json.loads(out)["status"] == "trained"  # a config change is a change (3: kept only)

    make_colour_dataset(data, per_class=5, seed=9, start=100)  # the folder grows overnight
    code, out, err = run_cli(base)
    result = json.loads(out)
    assert code in (0, 3) and result["status"] == "trained", err
    new_split = {f["path"]: f["split"] for f in json.loads((Path(result["run"]) / "data.json").read_text())["files"]}
    assert {p: new_split[p] for p in first_split} == first_split  # old images kept their split
    assert len(new_split) == len(first_split) + 15
    assert {k: v for k, v in tree_hashes(data).items() if k in hashes} == hashes


def test_scan_cache_makes_unchanged_rescans_read_nothing(tmp_path, data, monkeypatch):
    from vgg_cli.config.schema import load_config
    from vgg_cli.data import checks
    from vgg_cli.data import scan as scan_mod

    cfg = load_config(None, [f"data.train_dir={data}", f"data.image_size={SIZE}"]).data
    first = scan_mod.scan(cfg, cache_dir=tmp_path / "cache")
    reads = []
    real = checks.check_one
    monkeypatch.setattr(checks, "check_one", lambda p, s: reads.append(p) or real(p, s))
    again = scan_mod.scan(cfg, cache_dir=tmp_path / "cache")
    assert reads == [] and again.fingerprint == first.fingerprint
    (data / "red" / "red_000.png").write_bytes(b"broken now")  # changed size and mtime: read again
    third = scan_mod.scan(cfg, cache_dir=tmp_path / "cache")
    assert [p.name for p in reads] == ["red_000.png"]
    assert third.skipped[0]["path"] == "red/red_000.png" and third.fingerprint != first.fingerprint


def test_resume_errors(tmp_path):
    code, _, err = run_cli(["train", "--resume", f"output.dir={tmp_path / 'none'}"])
    assert code == 66 and "no unfinished run to resume" in err
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "nope")])
    assert code == 66
    code, _, err = run_cli(["train", "--resume", "train.epochs=3"])
    assert code == 64 and "its own config.yaml" in err
    code, out, err = run_cli(["train", "--json", "train.epochs=0"])
    assert code == 78 and json.loads(out) == {"status": "error", "exit_code": 78, "error": err.strip()[7:]}


def test_sync_repairs_a_crash_between_commit_and_bookkeeping(tmp_path):
    """The commit protocol without training: state.json decides; sync makes the rest agree."""
    paths = RunDir(tmp_path / "run")
    paths.checkpoints.mkdir(parents=True)
    for e in (1, 2, 3):
        paths.checkpoint(e).write_bytes(f"model after epoch {e}".encode())
    (paths.checkpoints / ".epoch-0004.keras.abc.tmp.keras").write_bytes(b"half")  # killed mid-write
    (paths.checkpoints / "tmpq7k2x_0f").write_bytes(b"half")  # ... while Keras wrote its HDF5 temp file
    paths.best.write_bytes(b"model after epoch 1")
    rows = [{"epoch": e, "val_accuracy": v, "val_loss": 1.0} for e, v in ((1, 0.5), (2, 0.4))]
    # Killed after epoch 3's checkpoint was written but before it was committed: state says epoch 2.
    sync(paths, TrainState(epochs=5, rows=rows, best_epoch=1))
    assert paths.last.read_bytes() == b"model after epoch 2"
    assert paths.best.read_bytes() == b"model after epoch 1"  # epoch 2 was worse: best untouched
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["epoch-0002.keras"]  # epoch 3 will be redone
    assert [r["epoch"] for r in csv.DictReader(paths.metrics.open())] == ["1", "2"]
    # Killed after committing a new best epoch but before best.keras was replaced: sync finishes the job.
    paths.checkpoint(3).write_bytes(b"model after epoch 3")
    sync(paths, TrainState(epochs=5, rows=rows + [{"epoch": 3, "val_accuracy": 0.9, "val_loss": 0.5}], best_epoch=3))
    assert paths.best.read_bytes() == paths.last.read_bytes() == b"model after epoch 3"


def test_checkpoints_stream_weights_through_a_file_not_memory(tmp_path, monkeypatch):
    """save_model makes Keras write the HDF5 weights to a temp file beside the target (not an in-memory copy of
    the whole file, the peak of a run's memory), removes it, leaves Keras as it was, and the checkpoint restores
    weights and optimizer state exactly."""
    import keras
    from keras.src.saving import saving_lib

    original = saving_lib.is_memory_sufficient  # the switch save_model flips: gone in a new Keras -> this fails
    stores = []

    class SpyStore(saving_lib.H5IOStore):
        def __init__(self, path_or_io, archive=None, mode="r"):
            stores.append((Path(str(path_or_io)).parent, archive is None, mode))
            super().__init__(path_or_io, archive=archive, mode=mode)

    monkeypatch.setattr(saving_lib, "H5IOStore", SpyStore)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)  # two steps: tracing a graph for them would take longer than running them
    x, y = np.random.default_rng(0).normal(size=(16, 6)).astype("float32"), np.arange(16) % 3
    model.fit(x, y, epochs=2, verbose=0)  # optimizer state to save
    target = tmp_path / "ckpt" / "epoch-0002.keras"
    target.parent.mkdir()
    save_model(model, target)
    assert stores == [(target.parent, True, "w")]  # a file next to the target, no in-memory archive store
    assert sorted(p.name for p in target.parent.iterdir()) == ["epoch-0002.keras"]  # its temp file is gone
    assert saving_lib.is_memory_sufficient is original
    back = keras.saving.load_model(target)
    for a, b in zip(model.weights + model.optimizer.variables, back.weights + back.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert int(keras.ops.convert_to_numpy(back.optimizer.iterations)) == 2
    np.testing.assert_array_equal(model.predict(x, verbose=0), back.predict(x, verbose=0))
    # A failed save (disk full, ...) raises and still leaves Keras' memory check as it was.
    monkeypatch.setattr(saving_lib, "_save_state", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(OSError):
        save_model(model, tmp_path / "ckpt" / "other.keras")
    assert saving_lib.is_memory_sufficient is original


@pytest.mark.slow
def test_if_changed_first_finishes_an_interrupted_run_of_the_same_job(tmp_path, data):
    """The nightly command itself resumes: no separate --resume step in cron."""
    runs = tmp_path / "runs"
    args = ["train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT, "train.epochs=4", "--if-changed",
            "--json"]
    sigkill_after(args, epoch_done(1, 4))
    (killed,) = real_runs(runs)
    code, out, err = run_cli(args)
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "trained" and result["run"] == str(killed.resolve())
    assert "did not finish" in err and "resuming" in err
    check_finished_run(killed, 4)
    code, out, _ = run_cli(args)  # and the next night there is nothing to do
    assert code == 0 and json.loads(out)["status"] == "nothing_to_do"
    assert len(real_runs(runs)) == 1


@pytest.mark.slow
def test_a_run_that_keeps_failing_does_not_block_later_nights(tmp_path, data):
    runs = tmp_path / "runs"
    args = ["train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT, "train.epochs=3", "--if-changed",
            "--json"]
    sigkill_after(args, epoch_done(1, 3))
    (stuck,) = real_runs(runs)
    info = json.loads((stuck / "run.json").read_text())
    info["resumed"] = [{"at": "2026-11-20T02:30:00+00:00", "after_epoch": 1}] * 3  # crashed on three nights
    (stuck / "run.json").write_text(json.dumps(info))
    code, out, err = run_cli(args)
    assert code == 0, err
    assert "resumed 3 times without finishing" in err
    assert json.loads(out)["run"] != str(stuck.resolve()) and len(real_runs(runs)) == 2
