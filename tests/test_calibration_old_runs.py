"""A run written by an older vgg (no temperature layer, no out-of-distribution statistics, no "calibration" in its
summary) predicts exactly as it did: today's code gives the old code's labels and probabilities, bit for bit, and
answers no image unknown unless --min-probability says so (tests/test_old_runs.py's approach: the package at
OLD_COMMIT, extracted with git archive, writes the run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import make_colour_dataset
from tests.test_old_runs import OLD_ARGS, REPO, TIMEOUT, _env, _extract_old_package

pytestmark = pytest.mark.slow


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("old_calibration")
    old = _extract_old_package(tmp / "old")
    data = make_colour_dataset(tmp / "photos", per_class=10, seed=3)
    holdout = make_colour_dataset(tmp / "holdout", per_class=3, seed=97)
    runs = tmp / "runs"
    r = subprocess.run([sys.executable, "-m", "vgg_cli", "train", f"data.train_dir={data}", f"output.dir={runs}",
                        *OLD_ARGS, "output.name=done"], cwd=tmp, env=_env(old), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return {"tmp": tmp, "old": old, "run": runs / "done", "holdout": holdout}


def _predict(old_run: dict, package, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgg_cli", "predict", "--run", str(old_run["run"]),
                           str(old_run["holdout"]), "--format", "json", "--top-k", "3", *args], cwd=old_run["tmp"],
                          env=_env(package), capture_output=True, text=True, timeout=TIMEOUT)


def test_an_old_run_predicts_exactly_as_before(old_run):
    before = _predict(old_run, old_run["old"])
    after = _predict(old_run, REPO)
    assert before.returncode == 0 and after.returncode == 0, (before.stderr, after.stderr)
    old_rows, new_rows = _lines(before.stdout), _lines(after.stdout)
    assert len(old_rows) == len(new_rows) == 9
    for o, n in zip(old_rows, new_rows):
        assert {k: n[k] for k in ("path", "label", "probability", "top_k")} == o  # the same floats, bit for bit
        assert n["unknown"] is False and n["ood_score"] is None and n["predicted"] == o["label"]
    assert not (old_run["run"] / "model" / "best.ood.npz").exists()
    # --uncalibrated is the same model's softmax; --min-probability still answers unknown
    raw = _lines(_predict(old_run, REPO, "--uncalibrated").stdout)
    assert [r["label"] for r in raw] == [o["label"] for o in old_rows]
    assert [r["probability"] for r in raw] == pytest.approx([o["probability"] for o in old_rows], abs=1e-6)
    strict = _lines(_predict(old_run, REPO, "--min-probability", "1.0").stdout)
    assert all(r["label"] == "unknown" and r["unknown_reason"] == "min_probability" for r in strict)


def test_an_old_run_is_evaluated_without_statistics(old_run, tmp_path):
    r = subprocess.run([sys.executable, "-m", "vgg_cli", "evaluate", "--run", str(old_run["run"]),
                        str(old_run["holdout"]), "--json", "--out", str(tmp_path / "ev")], cwd=old_run["tmp"],
                       env=_env(REPO), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["calibration"]["temperature"] == 1.0
    assert report["calibration"]["before"] == report["calibration"]["after"]
    assert report["unknown"]["method"] is None and report["unknown"]["accepted"] == 1.0
