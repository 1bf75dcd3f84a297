"""Runs written by an older vgg still work with today's code, end to end, through the CLI.

The module fixture extracts the package as it was at each of OLD_COMMITS (the last commit before the package was
split into sub-packages; the last before the train job was opened once, with a session, a job package and the task
seam) with ``git archive``, and runs that old code (``python -m vgg_cli`` with PYTHONPATH on the extracted
folder) to write one runs folder: a finished run and a run stopped by SIGINT after its first epoch. Today's code
(PYTHONPATH on this checkout) then resumes the stopped run, predicts, evaluates, exports, lists the runs and runs
the nightly ``--if-changed`` job on that folder, so a change to how summary.json, state.json, data.json,
config.yaml, the model files or the runs folder (latest, production, .production.json) are read that old runs cannot
follow fails here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_colour_dataset, run_cli

pytestmark = pytest.mark.slow

# commit -> what its runs lack: e541985 is the flat package, before calibration (no temperature layer, no
# statistics); 2e99dd1 the last commit before issue 35 (calibrated runs, the fcntl lock, promotion/finish.py)
OLD_COMMITS = {"e541985": "uncalibrated", "2e99dd1": "calibrated"}
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["blue", "green", "red"]  # make_colour_dataset's classes, sorted as a run's classes.json has them
EPOCHS = 3
# Overrides the OLD code understands (kept here, not imported from other tests, so that new keys added to today's
# fast-run lists cannot break the old code): 32 px, random weights, a small head, cached features.
OLD_ARGS = ["data.image_size=32", "model.weights=none", "model.head.dense=[16]", "model.head.dropout=0.0",
            f"train.epochs={EPOCHS}", "train.batch_size=8", "train.optimizer.learning_rate=0.003",
            "train.early_stopping_patience=0", "output.tensorboard=false", "promote.min_accuracy=0"]
TIMEOUT = 300


def _env(pythonpath: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(pythonpath), "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _extract_old_package(dest: Path, commit: str) -> Path:
    """``git -C REPO archive COMMIT vgg_cli | tar -x -C dest``; a clone without that commit fails the test."""
    try:
        found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                               capture_output=True, text=True)
    except FileNotFoundError:
        pytest.fail("git is not installed: it is needed to extract the old vgg_cli from commit "
                    f"{commit}", pytrace=False)
    if found.returncode != 0:
        said = (found.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"commit {commit} is not in the git history "
                    f"of {REPO} (git: {said}): this test needs a full clone (git fetch --unshallow)", pytrace=False)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "vgg_cli"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True)
    archive.stdout.close()
    archive_err = archive.stderr.read().decode(errors="replace")
    archive.wait(timeout=60)
    assert archive.returncode == 0 and tar.returncode == 0, (archive_err, tar.stderr)
    assert (dest / "vgg_cli" / "__main__.py").is_file(), f"the extracted package is not vgg_cli at {commit}"
    return dest


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module", params=sorted(OLD_COMMITS))
def old_runs(request, tmp_path_factory) -> dict:
    """One runs folder written by the old code: ``done`` (finished) and ``stopped`` (SIGINT after epoch 1)."""
    tmp = tmp_path_factory.mktemp("old_runs")
    old = _extract_old_package(tmp / "old", request.param)
    env = _env(old)
    where = subprocess.run([sys.executable, "-c", "import vgg_cli; print(vgg_cli.__file__)"], cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).resolve() == (old / "vgg_cli" / "__init__.py").resolve(), where
    data = make_colour_dataset(tmp / "photos", per_class=10, seed=3)
    holdout = make_colour_dataset(tmp / "holdout", per_class=3, seed=97)
    runs = tmp / "runs"
    train = [sys.executable, "-m", "vgg_cli", "train", f"data.train_dir={data}", f"output.dir={runs}", *OLD_ARGS]

    r = subprocess.run([*train, "output.name=done"], cwd=tmp, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    done = runs / "done"
    assert r.stdout.strip() == str(done) and _summary(done)["status"] == "finished"

    # stopped by SIGINT as soon as epoch 1 is reported (as tests/test_cli_train_predict.py does): it stops at the
    # next batch boundary, so after epoch 1 or 2 of 3
    proc = subprocess.Popen([*train, "output.name=stopped"], cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.monotonic() + TIMEOUT
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(f"epoch 1/{EPOCHS}  "):  # the epoch's committed line, not a progress line
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(lines)
        out, rest = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    err = "".join(lines) + rest
    assert proc.returncode == 75, err
    stopped = runs / "stopped"
    summary = _summary(stopped)
    assert summary["status"] == "interrupted" and summary["stopped_by"] == "SIGINT", summary
    assert summary["epochs_run"] in (1, 2), summary
    assert (stopped / "model" / "last.keras").is_file()
    # the old code made `done` production and latest; the stopped run moved neither
    assert (runs / "production").resolve() == done.resolve() and (runs / "latest").resolve() == done.resolve()
    return {"tmp": tmp, "runs": runs, "done": done, "stopped": stopped, "stopped_after": summary["epochs_run"],
            "data": data, "holdout": holdout, "env": _env(REPO), "old": old,
            "calibrated": OLD_COMMITS[request.param] == "calibrated"}


def vgg(old_runs: dict, *args: str) -> subprocess.CompletedProcess:
    """Today's ``vgg`` (this checkout's package, which this process imported) through its entry point, in this
    process: it has TensorFlow loaded already."""
    import vgg_cli

    assert Path(vgg_cli.__file__).resolve() == (REPO / "vgg_cli" / "__init__.py").resolve()
    code, out, err = run_cli(list(args))
    return subprocess.CompletedProcess(list(args), code, out, err)


def test_todays_code_is_the_one_under_test(old_runs):
    where = subprocess.run([sys.executable, "-c", "import vgg_cli; print(vgg_cli.__file__)"], cwd=old_runs["tmp"],
                           env=old_runs["env"], capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).resolve() == (REPO / "vgg_cli" / "__init__.py").resolve(), where


def test_predict_evaluate_and_export_an_old_finished_run(old_runs):
    """Reads only the old run (its evaluation/ and export/ get new files): independent of the resume below."""
    done = old_runs["done"]
    # predict with the run the old code finished: one image and a folder
    image = sorted((old_runs["holdout"] / "red").iterdir())[0]
    r = vgg(old_runs, "predict", "--run", str(done), str(image), str(old_runs["holdout"] / "blue"), "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = _json_lines(r.stdout)
    assert len(rows) == 4 and Path(rows[0]["path"]).name == image.name, r.stdout
    assert all(row["answer"] in CLASSES and 0.0 <= row["probability"] <= 1.0 for row in rows), rows

    # evaluate the old finished run on a folder
    r = vgg(old_runs, "evaluate", "--run", str(done), str(old_runs["holdout"]))
    assert r.returncode == 0, r.stderr
    report = json.loads((done / "evaluation" / "holdout" / "report.json").read_text())
    assert isinstance(report["accuracy"], float) and 0.0 <= report["accuracy"] <= 1.0, report["accuracy"]
    assert report["images"] == 3 * len(CLASSES), report.get("images")
    if not old_runs["calibrated"]:  # no temperature, no out-of-distribution statistics: nothing calibrated, rejected
        assert report["calibration"]["temperature"] == 1.0
        assert report["calibration"]["before"] == report["calibration"]["after"]
        assert report["unknown"]["method"] is None and report["unknown"]["accepted"] == 1.0
    else:  # the statistics the old code fitted answer today too
        assert report["unknown"]["method"] == "mahalanobis" and 0.0 <= report["unknown"]["accepted"] <= 1.0

    # export the old finished run (TFLite needs nothing beyond TensorFlow; it is checked in its interpreter)
    r = vgg(old_runs, "export", "--run", str(done), "--format", "tflite")
    assert r.returncode == 0, r.stderr
    exported = done / "export" / "model.tflite"
    assert exported.is_file() and exported.stat().st_size > 100_000, exported
    assert (done / "export" / "model.labels.txt").read_text().split() == CLASSES


def test_an_old_run_predicts_exactly_as_before(old_runs):
    """Today's code gives the old code's labels and probabilities, bit for bit; an uncalibrated old run (no
    temperature layer, no statistics) answers no image unknown unless --min-probability says so, a calibrated one
    the same unknowns as the old code."""
    def predict(package, *args: str) -> list[dict]:
        r = subprocess.run([sys.executable, "-m", "vgg_cli", "predict", "--run", str(old_runs["done"]),
                            str(old_runs["holdout"]), "--format", "json", "--top-k", "3", *args],
                           cwd=old_runs["tmp"], env=_env(package), capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        return _json_lines(r.stdout)

    def today(*args: str) -> list[dict]:  # in this process (see vgg())
        r = vgg(old_runs, "predict", "--run", str(old_runs["done"]), str(old_runs["holdout"]), "--format", "json",
                "--top-k", "3", *args)
        assert r.returncode == 0, r.stderr
        return _json_lines(r.stdout)

    # the old code named the answer "label" (issue 36: now "answer"; "label" is a ranked class's only)
    old_rows = [{("answer" if k == "label" else k): v for k, v in row.items()} for row in predict(old_runs["old"])]
    new_rows = today()
    assert len(old_rows) == len(new_rows) == 3 * len(CLASSES)
    if old_runs["calibrated"]:  # the same rows, field for field (the engine may differ: floats to 1e-5)
        for o, n in zip(old_rows, new_rows):
            assert {k: n[k] for k in o if k not in ("probability", "top_k", "ood_score")} == \
                {k: o[k] for k in o if k not in ("probability", "top_k", "ood_score")}
            assert n["probability"] == pytest.approx(o["probability"], abs=1e-5)
            assert n["ood_score"] == pytest.approx(o["ood_score"], rel=2e-4)
        assert (old_runs["done"] / "model" / "best.ood.npz").exists()
        return
    for o, n in zip(old_rows, new_rows):
        assert {k: n[k] for k in ("path", "answer", "probability", "top_k")} == o  # the same floats, bit for bit
        assert n["unknown"] is False and n["ood_score"] is None and n["predicted"] == o["answer"]
    assert not (old_runs["done"] / "model" / "best.ood.npz").exists()
    # --uncalibrated is the same model's softmax; --min-probability still answers unknown
    raw = today("--uncalibrated")
    assert [r["answer"] for r in raw] == [o["answer"] for o in old_rows]
    assert [r["probability"] for r in raw] == pytest.approx([o["probability"] for o in old_rows], abs=1e-6)
    strict = today("--min-probability", "1.0")
    assert all(r["answer"] == "unknown" and r["unknown_reason"] == "min_probability" for r in strict)


def test_resume_an_old_interrupted_run_then_list_and_retrain_if_changed(old_runs):
    runs, done, stopped = old_runs["runs"], old_runs["done"], old_runs["stopped"]
    # --resume finishes the old interrupted run; its promotion is decided once and carried out
    r = vgg(old_runs, "train", "--resume", str(stopped), "--json")
    assert r.returncode in (0, 3), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "trained" and result["run"] == str(stopped.resolve()), result
    summary = _summary(stopped)
    assert summary["status"] in ("finished", "early_stopped"), summary["status"]
    assert summary["epochs_run"] == EPOCHS or summary["status"] == "early_stopped"
    assert [e["after_epoch"] for e in summary["resumed"]] == [old_runs["stopped_after"]], summary["resumed"]
    assert summary["classes"] == CLASSES
    promotion = summary["promotion"]
    assert not promotion.get("pending") and promotion.get("applied") is True, promotion
    assert isinstance(promotion.get("promoted"), bool) and promotion.get("reason"), promotion
    assert (r.returncode == 0) == promotion["promoted"], (r.returncode, promotion)
    production = stopped if promotion["promoted"] else done
    assert (runs / "production").resolve() == production.resolve()
    assert (runs / "latest").resolve() == stopped.resolve()

    # vgg runs lists both, with the old summaries' fields
    r = vgg(old_runs, "runs", "--runs-dir", str(runs), "--json")
    assert r.returncode == 0, r.stderr
    listed = {row["run"]: row for row in _json_lines(r.stdout)}
    assert sorted(listed) == ["done", "stopped"], listed
    assert listed["done"]["status"] == "finished" and listed["done"]["promoted"] is True
    assert listed["stopped"]["status"] == summary["status"] and listed["stopped"]["latest"] is True
    assert listed[production.name]["production"] is True
    for row in listed.values():
        assert row["classes"] == len(CLASSES) and row["images"] == 10 * len(CLASSES), row
        assert row["monitor"] == "val_accuracy" and 0.0 <= row["best"] <= 1.0, row

    # the nightly job on the same data and config: nothing to do (or a new run), never an error
    r = vgg(old_runs, "train", f"data.train_dir={old_runs['data']}", f"output.dir={runs}", *OLD_ARGS,
            "--if-changed", "--json")
    assert r.returncode in (0, 3), r.stderr
    result = json.loads(r.stdout)
    assert result["status"] in ("nothing_to_do", "trained"), result
    if result["status"] == "nothing_to_do":
        assert result["run"] == str(stopped.resolve()), result
    else:  # a new run (the old runs' config digest or fingerprint no longer matches): a whole, finished one
        assert Path(result["run"]).parent == runs.resolve() and Path(result["run"]).name not in ("done", "stopped")
        assert _summary(Path(result["run"]))["status"] in ("finished", "early_stopped"), result
