"""Two-phase fine-tuning, learning-rate schedules, label smoothing, class weights and the training-curves picture."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SIZE, epoch_done, make_colour_dataset, run_cli, start, wait_for
from vgg_cli.model.build import conv_layers_by_block
from vgg_cli.model.load import load_model
from vgg_cli.model.optim import PhaseSchedule
from vgg_cli.model.task_parts import SmoothedSparseCrossentropy
from vgg_cli.runs.rundir import RunDir
from vgg_cli.training.checkpoints import Monitor, RunRecorder, TrainState

BASE = [f"data.image_size={SIZE}", "model.head.dense=[16]", "model.head.dropout=0.0", "train.batch_size=8",
        "train.optimizer.learning_rate=0.003", "train.early_stopping_patience=0", "output.tensorboard=false",
        "promote.min_accuracy=0",
        # the head of before (auto would pick batch for a fine-tuning run): these tests check the phase mechanics,
        # and on 24 images in batches of 8 at a fine-tuning rate of 3e-4 the batch-normalised head's training loss
        # rebounds in phase 2 (0.007 -> 0.62), which the learning check below would read as not learning
        "model.head.norm=none"]  # these tests check phases and resuming; a random backbone learns little here
TWO_PHASE = [*BASE, "train.epochs=2", "finetune.epochs=2", "finetune.unfreeze_blocks=[4,5]",
             "finetune.learning_rate=0.0003"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("ft") / "photos", per_class=10, seed=4)


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """Random VGG16 conv weights the test knows, so 'unchanged' and 'changed' can be checked exactly."""
    from vgg_cli.model.build import build_backbone
    from vgg_cli.model.weights import he_initialise

    keras.utils.set_random_seed(3)
    backbone = build_backbone("vgg16", SIZE)
    he_initialise(backbone)
    path = tmp_path_factory.mktemp("weights") / "vgg16-test.weights.h5"
    backbone.save_weights(path)
    return path


def metrics_rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def conv_weights(model: keras.Model) -> dict[int, list[np.ndarray]]:
    backbone = next(l for l in model.layers if isinstance(l, keras.Model))
    return {b: [w for layer in convs for w in layer.get_weights()]
            for b, convs in conv_layers_by_block(backbone).items()}


@pytest.mark.slow
def test_phase_two_unfreezes_the_named_blocks_only_and_keeps_learning(tmp_path, data, backbone_file):
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=ft",
                              f"model.weights={backbone_file}", *TWO_PHASE, "--json"])
    assert code == 0, err
    run = runs / "ft"
    rows = metrics_rows(run)
    assert [(int(r["epoch"]), int(r["phase"])) for r in rows] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.003, 0.003, 0.0003, 0.0003])
    assert "phase 2: frozen blocks 1, 2, 3, learning rate 0.0003 (epochs 3-4)" in err
    summary = json.loads((run / "summary.json").read_text())
    phases = summary["phases"]
    assert [(p["phase"], p["frozen_blocks"], p["epochs"]) for p in phases] == [
        (1, [1, 2, 3, 4, 5], [1, 2]), (2, [1, 2, 3], [3, 4])]
    # each phase ran on the cached features of its own frozen prefix
    assert phases[0]["input"]["frozen_prefix_blocks"] == 5 and phases[1]["input"]["frozen_prefix_blocks"] == 3

    start_weights = conv_weights(_backbone_model(backbone_file))
    final = load_model(run / "model" / "last.keras")
    backbone = next(l for l in final.layers if isinstance(l, keras.Model))
    for block, convs in conv_layers_by_block(backbone).items():
        assert all(layer.trainable == (block in (4, 5)) for layer in convs), block
    after = conv_weights(final)
    for block in (1, 2, 3):
        for a, b in zip(start_weights[block], after[block]):
            np.testing.assert_array_equal(a, b)
    for block in (4, 5):  # frozen in phase 1, so any change is phase 2's
        assert all(not np.array_equal(a, b) for a, b in zip(start_weights[block][::2], after[block][::2])), block
    # phase 2 keeps learning: its training loss falls within the phase and ends below phase 1's last
    losses = [float(r["loss"]) for r in rows]
    assert losses[3] < losses[2] and losses[3] < losses[1], losses


def _backbone_model(weights: Path) -> keras.Model:
    from vgg_cli.model.build import build_backbone

    backbone = build_backbone("vgg16", SIZE)
    backbone.load_weights(weights)
    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), backbone])


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [2, 3], ids=["epoch 2/4", "epoch 3/4"])
def test_two_phase_run_resumes_in_either_phase(tmp_path, data, stop_after):
    """SIGTERM right after epoch 2 stops at the phase boundary (resume must set up phase 2); after epoch 3 it stops
    inside phase 2 (resume must keep phase 2's trainable flags and optimizer from the checkpoint)."""
    runs = tmp_path / "runs"
    proc = start(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=r", "model.weights=none",
                  *TWO_PHASE, "train.schedule.name=cosine"])
    wait_for(proc, epoch_done(stop_after, 4))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 75, err
    done = json.loads((runs / "r" / "state.json").read_text())["epoch"]
    assert done >= stop_after
    code, out, err = run_cli(["train", "--resume", str(runs / "r"), "--json"])
    assert code == 0, err
    rows = metrics_rows(runs / "r")
    assert [(int(r["epoch"]), int(r["phase"])) for r in rows] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    # cosine per phase: each phase's last epoch ends at rate 0; phase 2's first epoch ends halfway down its curve
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[1] == pytest.approx(0.0, abs=1e-9) and rates[3] == pytest.approx(0.0, abs=1e-9)
    assert rates[0] == pytest.approx(0.003 * 0.5, rel=1e-5) and rates[2] == pytest.approx(0.0003 * 0.5, rel=1e-5)
    final = load_model(runs / "r" / "model" / "last.keras")
    backbone = next(l for l in final.layers if isinstance(l, keras.Model))
    assert [layer.trainable for layer in conv_layers_by_block(backbone)[4]] == [True] * 3
    assert [layer.trainable for layer in conv_layers_by_block(backbone)[3]] == [False] * 3
    state = json.loads((runs / "r" / "state.json").read_text())
    assert state["phase_ends"] == [2, 4] and state["epoch"] == 4


def _recorder(tmp_path, state: TrainState, phase: int, patience: int = 2) -> RunRecorder:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    paths = RunDir(tmp_path)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    rec = RunRecorder(paths, state, Monitor("val_accuracy", True), patience, 10, phase=phase)
    rec.set_model(model)
    return rec


def test_early_stopping_ends_phase_one_and_phase_two_still_runs(tmp_path):
    state = TrainState(epochs=8, phase_ends=[5, 8])
    rec = _recorder(tmp_path, state, phase=1)
    for epoch, acc in enumerate([0.5, 0.4, 0.4]):
        rec.on_epoch_begin(epoch)
        rec.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_accuracy": acc})
    assert rec.model.stop_training and not state.stopped_early
    assert state.phase_ends == [3, 6] and state.epochs == 6 and state.phase_index == 1
    rec = _recorder(tmp_path, state, phase=2)
    for epoch, acc in [(3, 0.45), (4, 0.45)]:  # patience counts from the phase start, not from epoch 1's best
        rec.on_epoch_begin(epoch)
        rec.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0, "val_accuracy": acc})
        assert rec.model.stop_training == (epoch == 4)
    assert state.stopped_early and state.epoch == 5
    assert [r["phase"] for r in state.rows] == [1, 1, 1, 2, 2]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["phase_ends"] == [3, 6] and saved["stopped_early"] is True


@pytest.mark.parametrize("kind,warmup,expected", [
    ("constant", 0, {0: 1.0, 7: 1.0, 40: 1.0}),
    ("constant", 4, {0: 0.25, 1: 0.5, 3: 1.0, 9: 1.0}),
    ("cosine", 0, {0: 1.0, 5: 0.5, 10: 0.0, 12: 0.0}),
    ("cosine", 2, {0: 0.5, 1: 1.0, 2: 1.0, 6: 0.5, 10: 0.0}),
    ("step", 0, {0: 1.0, 2: 1.0, 3: 0.1, 5: 0.1, 6: 0.01}),
])
def test_schedules_give_the_expected_rate_per_step(kind, warmup, expected):
    schedule = PhaseSchedule(2e-3, total_steps=10, kind=kind, warmup_steps=warmup, step_steps=3, step_factor=0.1)
    for step, fraction in expected.items():
        assert float(schedule(step)) == pytest.approx(2e-3 * fraction, rel=1e-5, abs=1e-12), (kind, step)
    again = PhaseSchedule.from_config(schedule.get_config())
    assert float(again(5)) == pytest.approx(float(schedule(5)))


def test_schedule_config_maps_epochs_to_steps():
    from vgg_cli.config.schema import load_config
    from vgg_cli.model.optim import learning_rate_for

    cfg = load_config(None, ["train.schedule.name=step", "train.schedule.step_epochs=2",
                             "train.schedule.warmup_epochs=0.5"]).train.schedule
    s = learning_rate_for(cfg, 0.01, epochs=6, steps_per_epoch=4)
    assert (s.total_steps, s.warmup_steps, s.step_steps) == (24, 2, 8)
    assert learning_rate_for(load_config(None, []).train.schedule, 0.01, 6, 4) == 0.01  # constant: a plain float


def test_label_smoothing_loss_matches_the_formula():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], np.float32)
    labels = np.array([0, 1])
    loss = SmoothedSparseCrossentropy(3, 0.3, from_logits=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target = np.full((2, 3), 0.1)
    target[[0, 1], labels] = 0.8
    expected = float(np.mean(-(target * np.log(p)).sum(axis=1)))
    assert float(loss(labels, logits)) == pytest.approx(expected, rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(SmoothedSparseCrossentropy(3, 0.0, from_logits=True)(labels, logits)) == pytest.approx(
        float(plain(labels, logits)), rel=1e-6)


def test_class_weights_balanced_and_by_name(tmp_path):
    from vgg_cli.config.schema import load_config
    from vgg_cli.data.scan import scan
    from vgg_cli.errors import ConfigError
    from vgg_cli.training.plan import class_weights

    root = make_colour_dataset(tmp_path / "d", per_class=4, seed=1, classes=["red", "green"])
    make_colour_dataset(root, per_class=12, seed=2, classes=["blue"])
    cfg = load_config(None, [f"data.train_dir={root}", "data.val_split=0", f"data.image_size={SIZE}",
                             "train.class_weight=balanced"])
    index = scan(cfg.data)
    assert index.classes == ["blue", "green", "red"]
    assert class_weights(cfg, index) == pytest.approx({0: 20 / 36, 1: 20 / 12, 2: 20 / 12})
    cfg = load_config(None, [f"data.train_dir={root}", "train.class_weight={red: 3}"])
    assert class_weights(cfg, index) == {0: 1.0, 1: 1.0, 2: 3.0}
    cfg = load_config(None, [f"data.train_dir={root}", "train.class_weight={rde: 3}"])
    with pytest.raises(ConfigError, match=r"names \['rde'\], which are not classes"):
        class_weights(cfg, index)


@pytest.mark.slow
def test_run_with_smoothing_weights_and_warmup_writes_readable_curves(tmp_path, data):
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "output.name=c",
                              "model.weights=none", *BASE, "train.epochs=3", "train.label_smoothing=0.1",
                              "train.class_weight=balanced", "train.schedule.warmup_epochs=1", "--json"])
    assert code == 0, err
    counts = json.loads((runs / "c" / "summary.json").read_text())["counts"]
    n = sum(c["train"] for c in counts.values())
    shown = ", ".join(f"{name} {n / (3 * c['train']):.3g}" for name, c in sorted(counts.items()))
    assert f"class weights: {shown}" in err
    rows = metrics_rows(runs / "c")
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([0.003] * 3)  # warmup done after epoch 1
    curves = runs / "c" / "curves.png"
    with Image.open(curves) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 300
        colours = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 50  # drawn, not blank
    # a resumed or model-loading reader gets the custom loss back
    assert load_model(runs / "c" / "model" / "best.keras", compile=True).loss.label_smoothing == 0.1


def test_finetune_config_errors():
    code, _, err = run_cli(["config", "show", "finetune.epochs=2", "finetune.unfreeze_blocks=[3]",
                            "model.freeze_blocks=[1,2]"])
    assert code == 78 and "blocks [3] are not frozen in phase 1" in err and "model.freeze_blocks=[1, 2]" in err
    code, _, err = run_cli(["config", "show", "finetune.epochs=2", "finetune.unfreeze_blocks=[]"])
    assert code == 78 and "phase 2 (finetune.epochs=2) needs blocks to unfreeze" in err
    code, _, err = run_cli(["config", "show", "train.schedule.name=linear"])
    assert code == 78 and "train.schedule.name" in err
    code, _, err = run_cli(["config", "show", "train.class_weight={red: 0}"])
    assert code == 78 and "weights must be finite numbers > 0" in err
    code, _, _ = run_cli(["config", "show", "finetune.unfreeze_blocks=[3]", "model.freeze_blocks=[1,2]"])
    assert code == 0  # no phase 2: nothing to check
