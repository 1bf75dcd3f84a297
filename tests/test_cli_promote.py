"""Champion/challenger through the CLI: promotion both ways, min_accuracy, class drift, rollback, keep, warm start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import COLOURS, SIZE, colour_image, make_colour_dataset, run_cli

GOOD = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[16]", "model.head.dropout=0.0",
        "train.batch_size=8", "train.optimizer.learning_rate=0.003", "train.early_stopping_patience=0",
        "output.tensorboard=false", "train.epochs=10",
        "output.report=false"]  # no test here reads report.html or evaluation/: the promotion is judged without them
BAD = [*GOOD, "train.epochs=1", "train.optimizer.learning_rate=1e-7", "train.seed=7"]  # barely trained


def train(data: Path, runs: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "--json", *extra])
    return code, json.loads(out), err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The photos every test trains on (read only: a test that changes them works on a copy)."""
    return make_colour_dataset(tmp_path_factory.mktemp("promote") / "photos", per_class=10, seed=3)


@pytest.fixture(scope="module")
def trained_champion(tmp_path_factory, data) -> Path:
    """One real first run, promoted because there is no production yet: the runs folder each test copies."""
    runs = tmp_path_factory.mktemp("champion") / "runs"
    code, result, err = train(data, runs, *GOOD, "output.name=champion")
    assert code == 0 and result["promoted"] is True, err
    assert result["promotion"]["reason"].startswith("no production model yet; accuracy")
    assert (runs / "production").resolve() == (runs / "champion").resolve()
    return runs


@pytest.fixture
def champion(tmp_path, trained_champion) -> tuple[Path, Path]:
    """A runs folder of its own holding the champion in production (its links are relative: they move along)."""
    runs = shutil.copytree(trained_champion, tmp_path / "runs", symlinks=True)
    assert (runs / "production").resolve() == (runs / "champion").resolve() == (runs / "latest").resolve()
    return runs, runs / "champion"


def fake_run(runs: Path, name: str) -> Path:
    """A finished run's folder as far as pruning reads it (config.yaml makes it a run; classes, summary), made
    without training."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    (run / "classes.json").write_text(json.dumps(sorted(COLOURS)))
    (run / "summary.json").write_text(json.dumps({
        "status": "finished", "classes": sorted(COLOURS), "images": {"train": 24, "val": 6},
        "monitor": "val_accuracy", "best": {"epoch": 1, "val_accuracy": 0.5},
        "promotion": {"promoted": False, "applied": True, "reason": "a stand-in"}}))
    return run


@pytest.mark.slow
def test_worse_model_is_kept_but_not_promoted_exit_3(champion, data):
    runs, champ = champion
    code, result, err = train(data, runs, *BAD, "output.name=weak")
    assert code == 3 and result["exit_code"] == 3 and result["status"] == "trained" and result["promoted"] is False
    p = result["promotion"]
    assert p["production_run"] == "champion" and p["new_accuracy"] < p["production_accuracy"]
    assert "below production champion's" in p["reason"] and "not promoted" in err
    assert (runs / "production").resolve() == champ.resolve()  # production unchanged
    assert (runs / "latest").resolve() == (runs / "weak").resolve()  # latest = newest finished run
    summary = json.loads((runs / "weak" / "summary.json").read_text())
    assert summary["promotion"] == p
    # predict uses production by default, not latest
    img = runs.parent / "x.png"
    colour_image(COLOURS["red"], np.random.default_rng(0)).save(img)
    code, out, _ = run_cli(["predict", str(img), "--runs-dir", str(runs), "--format", "json"])
    assert code == 0 and json.loads(out)["answer"] == "red"


@pytest.mark.slow
def test_equal_or_better_model_is_promoted_and_rollback_restores(champion, data):
    runs, champ = champion
    code, result, _ = train(data, runs, *GOOD, "output.name=challenger", "train.seed=5")
    p = result["promotion"]
    assert code == 0 and p["promoted"] and p["new_accuracy"] >= p["production_accuracy"]
    assert (runs / "production").resolve() == (runs / "challenger").resolve()
    code, out, _ = run_cli(["rollback", "--runs-dir", str(runs)])
    assert code == 0 and out.strip() == "champion"
    assert (runs / "production").resolve() == champ.resolve()
    code, _, err = run_cli(["rollback", "--runs-dir", str(runs)])
    assert code == 66 and "nothing to roll back to" in err
    code, _, _ = run_cli(["promote", "challenger", "--runs-dir", str(runs)])
    assert code == 0 and (runs / "production").resolve() == (runs / "challenger").resolve()
    code, out, _ = run_cli(["runs", "--runs-dir", str(runs), "--json"])
    listed = {r["run"]: r for r in map(json.loads, out.splitlines())}
    assert listed["challenger"]["production"] and listed["challenger"]["latest"]
    assert listed["champion"]["images"] == 30 and listed["champion"]["classes"] == 3


@pytest.mark.slow
def test_min_accuracy_gate_applies_even_without_production(tmp_path, data):
    runs = tmp_path / "runs"
    code, result, err = train(data, runs, *BAD, "promote.min_accuracy=0.99", "output.report=false")
    p = result["promotion"]
    assert code == 3 and "does not clear promote.min_accuracy 0.99" in p["reason"]
    assert not (runs / "production").exists()
    # with nothing to compare against, the new model's accuracy is its best epoch's validation accuracy; it must
    # be what the saved model scores when it is run on the held-out images
    from vgg_cli.data.index import VAL, index_from_manifest
    from vgg_cli.evaluation.frozen import content_hashes
    from vgg_cli.promotion.decide import HeldOut, evaluate
    from vgg_cli.runs.rundir import RunDir

    run = Path(result["run"])
    summary = json.loads((run / "summary.json").read_text())
    assert p["new_accuracy_from"] == f"validation of epoch {summary['best']['epoch']}"
    index = index_from_manifest(json.loads((run / "data.json").read_text()))
    files, labels = index.split(VAL)
    truth = [index.classes[i] for i in labels]
    scored = evaluate(RunDir(run), HeldOut(files, truth))  # the whole model on the images
    assert p["evaluated_on"]["images"] == scored["images"] == len(files) > 0
    assert p["new_accuracy"] == pytest.approx(scored["accuracy"], abs=1e-6)
    # promotion's comparisons answer from the feature cache through the trainable rest: the same score
    assert evaluate(RunDir(run), HeldOut(files, truth, content_hashes(index, files))) == scored


def test_promote_refuses_unfinished_runs(tmp_path):
    runs = tmp_path / "runs"
    (runs / "broken").mkdir(parents=True)
    (runs / "broken" / "config.yaml").write_text("{}\n")
    code, _, err = run_cli(["promote", "broken", "--runs-dir", str(runs)])
    assert code == 66 and "did not finish" in err


@pytest.mark.slow
def test_keep_prunes_old_runs_but_never_production(champion, data):
    """Two older runs stand in for earlier nights; the one real run prunes them at its end (output.keep)."""
    runs, champ = champion
    fake_run(runs, "weak0")
    fake_run(runs, "weak1")
    train(data, runs, *BAD, "output.name=weak2", "output.keep=2")
    left = sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    assert "champion" in left and "weak2" in left  # production and latest survive
    assert len(left) == 2


@pytest.mark.slow
def test_warm_start_from_production_takes_backbone_and_head(champion, data):
    runs, champ = champion
    code, result, err = train(data, runs, *GOOD, "model.weights=production", "train.epochs=1",
                              "train.optimizer.learning_rate=1e-4")
    assert code in (0, 3), err
    summary = json.loads((Path(result["run"]) / "summary.json").read_text())
    assert summary["weights"].startswith(f"production: run {champ.resolve()}") and "its head" in summary["weights"]
    # a head that starts trained: after one small-step epoch it is already as good as the champion (a new head
    # gets about 0.4 here after that epoch; chance is 1/3)
    champion_best = json.loads((champ / "summary.json").read_text())["best"]["val_accuracy"]
    assert champion_best >= 0.9 and summary["final"]["val_accuracy"] >= champion_best - 0.1
    code, result, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs.parent / 'empty'}",
                                 "model.weights=production"])
    assert code == 66 and "there is no" in err
