"""Light checkpoints (vgg_cli.training.snapshots): a frozen run's epochs store only what changed, resume from them
bit for bit, and a finished run still holds plain Keras files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.conftest import SIZE, TRAIN_ARGS, make_colour_dataset, run_cli
from vgg_cli.errors import NoInputError
from vgg_cli.fsio import write_with
from vgg_cli.model.load import load_model
from vgg_cli.training import snapshots
from vgg_cli.training.checkpoints import load_checkpoint, save_model

ROOT = Path(__file__).resolve().parents[1]
# Dropout > 0: its random state is a variable that changes every step, so resuming must restore it too.
ARGS = [*TRAIN_ARGS, "train.epochs=5", "model.head.dropout=0.3", "output.report=false"]


def _frozen_model() -> keras.Model:
    """A small model whose first layer is frozen and most of its bytes, trained one step (optimizer built)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, trainable=False, name="frozen"),
                              keras.layers.Dense(256, trainable=False, name="frozen2"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax", name="head")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(np.random.rand(8, 64), np.arange(8) % 3, verbose=0)
    return model


def _values(model: keras.Model, saved_only: bool = False) -> list[np.ndarray]:
    """Every variable's value; ``saved_only``: those a .keras file keeps (Keras gives a loaded model's dropout a new
    random seed state, whatever the file; vgg reseeds each epoch, so that state is not what resumes)."""
    variables = [*model.variables, *model.optimizer.variables]
    return [keras.ops.convert_to_numpy(v.value) for v in variables
            if not (saved_only and "seed_generator" in v.path)]


def test_a_delta_restores_every_variable_and_the_optimizer_exactly(tmp_path):
    model = _frozen_model()
    assert snapshots.worth_it(model)
    base_path = tmp_path / "epoch-0001.keras"
    write_with(base_path, lambda t: save_model(model, t), suffix=".keras")
    base = snapshots.Base.of(base_path, model)
    model.fit(np.random.rand(8, 64), np.arange(8) % 3, verbose=0)  # changes the head, Adam's state, dropout's seed
    delta = tmp_path / f"epoch-0002{snapshots.DELTA_SUFFIX}"
    snapshots.write_delta(model, base, delta)
    manifest = snapshots.read_manifest(delta)
    stored = {name.split("/", 1)[-1] for name, _, here in manifest["model"] if here}  # without the model's name
    assert manifest["base"] == base_path.name and "frozen/kernel" not in stored  # the frozen layer is not in it
    assert {"head/kernel", "head/bias"} <= stored and delta.stat().st_size < base_path.stat().st_size / 10
    loaded, loaded_base = load_checkpoint(delta)
    assert loaded_base is not None and loaded_base.path == base_path
    for got, want in zip(_values(loaded), _values(model), strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_a_damaged_or_mismatched_delta_is_one_line(tmp_path):
    model = _frozen_model()
    base_path = tmp_path / "epoch-0001.keras"
    write_with(base_path, lambda t: save_model(model, t), suffix=".keras")
    delta = tmp_path / f"epoch-0002{snapshots.DELTA_SUFFIX}"
    snapshots.write_delta(model, snapshots.Base.of(base_path, model), delta)
    cut = tmp_path / f"epoch-0003{snapshots.DELTA_SUFFIX}"
    cut.write_bytes(delta.read_bytes()[:100])
    with pytest.raises(NoInputError, match="could not be loaded.*cannot be resumed"):
        load_checkpoint(cut)
    garbled = tmp_path / f"epoch-0004{snapshots.DELTA_SUFFIX}"  # whole, but 2% of its bytes garbled from a quarter in
    data = bytearray(delta.read_bytes())
    start = len(data) // 4
    data[start:start + len(data) // 50] = bytes(len(data) // 50)
    garbled.write_bytes(bytes(data))
    with pytest.raises(NoInputError, match="could not be loaded.*cannot be resumed"):
        load_checkpoint(garbled)
    other = keras.Sequential([keras.Input((64,)), keras.layers.Dense(4)])  # a base the delta does not fit
    other.compile(optimizer="adam", loss="mse")
    other.fit(np.zeros((2, 64)), np.zeros((2, 4)), verbose=0)
    write_with(base_path, lambda t: save_model(other, t), suffix=".keras")
    with pytest.raises(NoInputError, match="cannot be resumed"):
        load_checkpoint(delta)


def test_a_model_that_mostly_trains_is_checkpointed_whole():
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(3)])
    assert not snapshots.worth_it(model)


@pytest.mark.slow
def test_a_killed_frozen_run_resumes_bit_identically_from_light_checkpoints(tmp_path):
    data = make_colour_dataset(tmp_path / "photos", per_class=8, seed=3)
    runs = tmp_path / "runs"
    code, _, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=whole", *ARGS])
    assert code == 0, err
    # The same run killed just before epoch 4's commit (the 4th replace of state.json): epochs 1-3 are committed.
    r = subprocess.run([sys.executable, "-m", "tests.killpoint", "replace", "*/state.json", "4", "KILL", "train",
                        f"data.train_dir={data}", f"output.dir={runs}", "output.name=cut", *ARGS],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == -9, r.stderr
    cut = runs / "cut"
    state = json.loads((cut / "state.json").read_text())
    assert state["epoch"] == 3 and state["checkpoint"] == f"model/checkpoints/epoch-0003{snapshots.DELTA_SUFFIX}"
    files = {p.name: p.stat().st_size for p in (cut / "model" / "checkpoints").iterdir()}
    assert "epoch-0001.keras" in files  # the base: the only full copy of the frozen backbone
    assert all(size < files["epoch-0001.keras"] / 20 for name, size in files.items() if name.endswith(".npz"))
    code, _, err = run_cli(["train", "--resume", str(cut)])
    assert code == 0, err
    assert "resuming cut after epoch 3 of 5" in err
    rows = [(r["epoch"], r["loss"], r["val_loss"]) for r in json.loads((runs / "whole" / "state.json").read_text())["rows"]]
    resumed = json.loads((cut / "state.json").read_text())
    assert [(r["epoch"], r["loss"], r["val_loss"]) for r in resumed["rows"]] == rows  # every epoch's numbers exact
    for name in ("best.keras", "last.keras"):
        a, b = load_model(runs / "whole" / "model" / name, compile=True), load_model(cut / "model" / name, compile=True)
        for got, want in zip(_values(b, saved_only=True), _values(a, saved_only=True), strict=True):
            assert np.array_equal(got, want), name
    # finished: plain Keras files only, one full checkpoint per distinct model, no base or delta left
    assert sorted(p.name for p in (cut / "model" / "checkpoints").iterdir()) == ["epoch-0005.keras"]
    assert resumed["checkpoint"] == "model/checkpoints/epoch-0005.keras"
    assert (cut / "model" / "checkpoints" / "epoch-0005.keras").samefile(cut / "model" / "last.keras")


@pytest.mark.slow
def test_a_kill_while_best_keras_is_built_is_finished_by_resume(tmp_path):
    """SIGKILL just before best.keras is replaced by the model built from the light checkpoints (the second replace
    of best.keras: the first linked epoch 1's full checkpoint): --resume builds it again, from the same files."""
    data = make_colour_dataset(tmp_path / "photos", per_class=8, seed=3)
    runs = tmp_path / "runs"
    args = ["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=k", *ARGS, "train.epochs=3"]
    r = subprocess.run([sys.executable, "-m", "tests.killpoint", "replace", "*/model/best.keras", "2", "KILL", *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == -9, r.stderr
    run = runs / "k"
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 3 and not (run / "summary.json").exists()
    assert snapshots.is_delta(Path(state["checkpoint"]))  # killed before finalize committed the full checkpoint
    code, _, err = run_cli(["train", "--resume", str(run)])
    assert code == 0, err
    state = json.loads((run / "state.json").read_text())
    assert state["checkpoint"] == "model/checkpoints/epoch-0003.keras"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    # best.keras is the best epoch's model: it reproduces that epoch's validation loss
    from vgg_cli.data.images import load_image

    manifest = json.loads((run / "data.json").read_text())
    val = [f for f in manifest["files"] if f["split"] == "val"]
    x = np.stack([load_image(Path(manifest["train_dir"]) / f["path"], SIZE) for f in val]).astype("float32")
    probs = load_model(run / "model" / "best.keras").predict_on_batch(x)
    loss = float(np.mean(-np.log(probs[np.arange(len(val)), [f["label"] for f in val]])))
    best = state["rows"][state["best_epoch"] - 1]
    # float32 probabilities a few 1e-8 below 1 carry a confident model's tiny loss: relative 1e-4, or 1e-6 absolute
    assert loss == pytest.approx(best["val_loss"], rel=1e-4, abs=1e-6)
