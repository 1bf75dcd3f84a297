"""Training health (vgg_cli.training.health): a diverged run stops, keeps its last good epoch and is never production; a run
that does not learn is warned about and not promoted; promote.min_accuracy: auto."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.conftest import SIZE, make_colour_dataset, run_cli

BASE = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[16]", "model.head.dropout=0.0",
        "train.batch_size=8", "train.early_stopping_patience=0", "output.tensorboard=false",
        "output.report=false"]  # no test here reads report.html or evaluation/


@pytest.fixture
def data(tmp_path) -> Path:
    return make_colour_dataset(tmp_path / "photos", per_class=10, seed=5)


def _train(data: Path, runs: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", *BASE, *extra])


def test_nan_loss_stops_the_run_marks_it_and_never_promotes(tmp_path, data):
    runs = tmp_path / "runs"
    code, out, err = _train(data, runs, "output.name=nan", "train.epochs=3", "train.optimizer.name=sgd",
                            "train.optimizer.learning_rate=1e20")
    assert code == 4, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: training diverged: epoch 1 ended with loss nan") and "Traceback" not in err
    assert "marked diverged and not promoted" in line and "lower train.optimizer.learning_rate (now 1e+20" in line
    assert out == ""
    summary = json.loads((runs / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_run"] == 0
    assert summary["health"]["diverged"] == {"epoch": 1, "what": "epoch 1 ended with loss nan, val_loss nan",
                                             "kept_epoch": 0}
    assert summary["promotion"]["promoted"] is False and "diverged" in summary["promotion"]["reason"]
    assert not (runs / "production").exists() and not (runs / "latest").exists()
    assert not (runs / "nan" / "state.json").exists()  # the bad epoch was never committed
    # nothing can make it production or resume it into one
    code, _, err = run_cli(["train", "--resume", f"output.dir={runs}"])
    assert code == 66 and "no unfinished run" in err
    code, _, err = run_cli(["train", "--resume", str(runs / "nan")])
    assert code == 4 and "diverged (epoch 1 ended with loss nan, val_loss nan) and is not resumed" in err
    code, _, err = run_cli(["promote", "nan", "--runs-dir", str(runs)])
    assert code == 64 and "diverged, not finished" in err


@pytest.mark.slow
def test_divergence_keeps_the_last_good_epoch(tmp_path, data):
    """Phase 1 trains the head sanely for 2 epochs; phase 2's absurd rate blows the weights up in epoch 3."""
    runs = tmp_path / "runs"
    code, out, err = _train(data, runs, "output.name=two", "train.epochs=2", "train.optimizer.learning_rate=0.003",
                            "model.freeze_blocks=[1,2,3,4,5]", "finetune.epochs=2", "finetune.unfreeze_blocks=[5]",
                            "finetune.learning_rate=1e30", "--json")
    assert code == 4, err
    result = json.loads(out)
    assert result["status"] == "error" and result["exit_code"] == 4 and "diverged" in result["error"]
    assert "lower finetune.learning_rate (now 1e+30; try 1e+29)" in result["error"]  # phase 2's own rate
    run = runs / "two"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_run"] == 2
    assert summary["health"]["diverged"]["epoch"] == 3 and summary["health"]["diverged"]["kept_epoch"] == 2
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and [p.name for p in (run / "model" / "checkpoints").iterdir()] == ["epoch-0002.keras"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    from vgg_cli.model.load import load_model
    from vgg_cli.training.health import non_finite_weights

    best = load_model(run / "model" / "best.keras")  # the last good epochs' model, finite and usable
    assert non_finite_weights(best) == []
    code, out, _ = run_cli(["predict", str(next(data.glob("red/*.png"))), "--run", str(run), "--format", "json"])
    assert code == 0 and math.isfinite(json.loads(out)["probability"])
    assert not (runs / "production").exists() and not (runs / "latest").exists()


@pytest.mark.slow
def test_a_model_that_does_not_learn_is_warned_about_and_not_promoted(tmp_path, data):
    """The whole backbone from random weights at 0.01 with the head of before (no BatchNormalization): VGG16
    collapses to one answer (the issue's ln K case; with model.head.norm: batch it recovers by epoch 4)."""
    runs = tmp_path / "runs"
    code, out, err = _train(data, runs, "output.name=flat", "train.epochs=4", "model.freeze_blocks=[]",
                            "train.optimizer.learning_rate=0.01", "model.head.norm=none", "--json")
    assert code == 3, err
    warnings = [x for x in err.splitlines() if x.startswith("warning: the model is not learning")]
    assert len(warnings) == 1, err
    assert "lower train.optimizer.learning_rate (now 0.01; try 0.001, or auto)" in warnings[0]
    summary = json.loads((runs / "flat" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["health"]["status"] == "stalled"
    assert len(summary["health"]["stalled_epochs"]) >= 3
    p = summary["promotion"]
    val = [f for f in json.loads((runs / "flat" / "data.json").read_text())["files"] if f["split"] == "val"]
    shares = [sum(f["class"] == c for f in val) / len(val) for c in ("red", "green", "blue")]
    assert p["promoted"] is False and p["applied"] is True
    assert p["min_accuracy"] == round(max(shares), 6) and p["new_accuracy"] <= max(shares) + 1e-6
    assert "promote.min_accuracy auto: more than" in p["reason"] and "always guessing" in p["reason"]
    assert not (runs / "production").exists() and (runs / "latest").resolve() == (runs / "flat").resolve()


@pytest.mark.slow
def test_auto_rate_follows_what_trains_and_a_learning_model_is_promoted(tmp_path, data):
    runs = tmp_path / "runs"
    code, out, err = _train(data, runs, "output.name=ok", "train.epochs=4", "model.freeze_blocks=[1,2,3,4]", "--json")
    assert code == 0, err
    summary = json.loads((runs / "ok" / "summary.json").read_text())
    assert summary["phases"][0]["learning_rate"] == 1e-4 and summary["phases"][0]["learning_rate_auto"] is True
    assert "learning rate 0.0001 (auto)" in err
    health = summary["health"]  # a learning model: no warning, whatever its first epoch looked like
    assert {k: health[k] for k in ("status", "warning", "diverged")} == {"status": "ok", "warning": None,
                                                                         "diverged": None}
    assert 4 not in health["stalled_epochs"] and len(health["stalled_epochs"]) < 3, health
    assert "not learning" not in err
    assert summary["promotion"]["promoted"] is True and summary["promotion"]["new_accuracy"] > \
        summary["promotion"]["min_accuracy"]
    code, out, err = _train(data, runs, "output.name=head", "train.epochs=1", "--json")
    assert json.loads((runs / "head" / "summary.json").read_text())["phases"][0]["learning_rate"] == 1e-3


def test_baseline_and_min_accuracy_rules():
    from vgg_cli.promotion.decide import min_accuracy_for
    from vgg_cli.training.health import Baseline

    b = Baseline.of([0, 1, 2] * 4, [0, 0, 1, 2], 3)
    assert b.prior_loss == pytest.approx(math.log(3)) and b.chance_accuracy == 0.5
    assert b.stall_loss == pytest.approx(0.9 * math.log(3))
    smoothed = Baseline.of([0, 1, 2] * 4, [], 3, label_smoothing=0.3)
    assert smoothed.prior_loss == pytest.approx(math.log(3)) and 0 < smoothed.floor_loss < smoothed.stall_loss
    assert min_accuracy_for("auto", ["a", "a", "b", "c"])[:2] == (0.5, True)
    assert min_accuracy_for("auto", ["a", "a"])[:2] == (1.0, False)  # one class: only perfect counts
    assert min_accuracy_for(0.7, ["a", "b"])[:2] == (0.7, False)


def test_advice_fits_what_trains():
    from vgg_cli.training.health import rate_advice

    assert rate_advice(0.001, True).startswith("lower train.optimizer.learning_rate (auto chose 0.001; try 0.0001)")
    head = rate_advice(0.001, True, head_only=True)
    assert "model.weights=imagenet" in head and "model.head.dropout" in head and "freeze more" not in head
    assert rate_advice(1e-5, False, phase=2).startswith("lower finetune.learning_rate (now 1e-05; try 1e-06)")


def test_a_stalled_run_that_learns_again_says_recovered_and_its_warning_names_what_held():
    """Stalled for three epochs (the loss at guessing, val_accuracy 0.411 against a chance of 0.375: not clearly
    above it), then learnt (val 0.885): the record says recovered; the warning names both signs with their
    numbers."""
    from vgg_cli.training.health import Baseline, HealthCheck, HealthRecord

    baseline = Baseline.of([0, 1, 2] * 10, [0, 1, 2, 0, 1, 2, 0, 1], 3)
    record = HealthRecord()
    check = HealthCheck(baseline, record, rate=1e-4, auto_rate=True, has_val=True)
    stuck = baseline.stall_loss + 0.1
    rows = [{"epoch": e, "loss": stuck, "val_accuracy": 0.411} for e in (1, 2, 3)]
    check.replay(rows)
    assert record.status == "stalled" and record.stalled_epochs == [1, 2, 3]
    assert f"the training loss {stuck:.4g} is above" in record.warning
    assert "val_accuracy 0.411 is not clearly above 0.375" in record.warning
    check.replay([{"epoch": 4, "loss": 0.3, "val_accuracy": 0.885}])
    health = record.to_dict()
    assert health["status"] == "recovered" and health["recovered_epoch"] == 4
    assert health["warning"].startswith("recovered at epoch 4: it learns again; earlier, the model is not learning")
    check.replay([{"epoch": e, "loss": stuck, "val_accuracy": 0.2} for e in (5, 6, 7)])  # and stalls again
    assert record.status == "stalled" and record.recovered_epoch is None


def test_a_model_that_learns_on_validation_is_not_stalled_by_its_dropout_inflated_training_loss():
    """Issue 36: the training loss (dropout 0.5) stayed above 0.9 ln 3 while val_accuracy rose to 0.85 and the run
    was promoted: that is learning. The validation loss is the loss that counts when there is a validation split."""
    from vgg_cli.training.health import Baseline, HealthCheck, HealthRecord

    baseline = Baseline.of([0, 1, 2] * 10, [0, 1, 2] * 5, 3)
    stuck = baseline.stall_loss + 0.05
    record = HealthRecord()
    check = HealthCheck(baseline, record, rate=1e-3, auto_rate=True, has_val=True)
    check.replay([{"epoch": e, "loss": stuck, "val_loss": stuck, "val_accuracy": a}
                  for e, a in ((1, 0.6), (2, 0.75), (3, 0.85), (4, 0.85))])
    assert record.status == "ok" and record.warning is None and record.stalled_epochs == []
    record = HealthRecord()  # the training loss stuck, the validation loss falling, accuracy near chance: learning
    check = HealthCheck(baseline, record, rate=1e-3, auto_rate=True, has_val=True)
    check.replay([{"epoch": e, "loss": stuck, "val_loss": 0.5, "val_accuracy": 0.34} for e in (1, 2, 3)])
    assert record.status == "ok"
    record = HealthRecord()  # no sign at all: stalled, and the warning names the validation loss
    check = HealthCheck(baseline, record, rate=1e-3, auto_rate=True, has_val=True)
    check.replay([{"epoch": e, "loss": 0.2, "val_loss": stuck, "val_accuracy": 0.34} for e in (1, 2, 3)])
    assert record.status == "stalled" and f"val_loss {stuck:.4g} is above" in record.warning
