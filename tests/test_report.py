"""What a person sees: the evaluation at the end of training, the galleries and report.html, loaded in a real
headless browser (Debian's chromium; .ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("these tests need a headless browser: apt-get install chromium (.ci/run does)")
    return path


def load_in_browser(page: Path, screenshot: Path | None = None) -> tuple[dict, str]:
    """Load ``page`` from its file:// URL in headless Chromium: (attributes of <body> after load, console lines)."""
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
            "--v=0", "--virtual-time-budget=5000"]
    p = subprocess.run([*base, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", p.stdout)
    assert body is not None, p.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    console = [line for line in p.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    if screenshot is not None:
        s = subprocess.run([*base, "--window-size=1100,3000", f"--screenshot={screenshot}", page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
        assert s.returncode == 0 and screenshot.is_file(), s.stderr[-2000:]
    return attrs, "\n".join(console)


def test_training_ends_with_an_evaluation_and_a_report_the_browser_shows_whole(trained_run, tmp_path):
    run = trained_run["run_dir"]
    val = run / "evaluation" / "val"
    report = json.loads((val / "report.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    # the evaluation is of the run's own held-out images, and promotion used its accuracy (not a second pass)
    assert report["images"] == summary["images"]["val"] > 0 and report["data"].startswith("validation split")
    promotion = summary["promotion"]
    assert promotion["new_accuracy_from"] == "evaluation/val: model/best.keras on the images"
    assert promotion["new_accuracy"] == pytest.approx(report["accuracy"], abs=1e-6)
    assert report["accuracy"] == pytest.approx(summary["best"]["val_accuracy"], abs=1e-6)  # same images, weights
    assert "evaluated on the validation split: accuracy" in trained_run["stderr"]
    for name in ("misclassified.png", "correct.png", "confusion_matrix.png"):
        assert (val / name).stat().st_size > 500, name
    assert len((val / "per_class.csv").read_text().splitlines()) == 1 + len(summary["classes"])

    html = (run / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report must not reach the network"
    n_images = html.count("<img ")
    assert n_images == 5  # curves, two confusion matrices, two galleries
    assert f"vgg run {run.name}" in html and "promoted to production" in html
    assert escape(promotion["reason"]) in html
    attrs, console = load_in_browser(run / "report.html", tmp_path / "report.png")
    assert attrs.get("data-images-total") == str(n_images) == attrs.get("data-images-decoded"), attrs
    assert console == ""
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"))
    assert shot.shape == (3000, 1100) and shot.std() > 10  # a page was drawn, not a blank window


def test_a_broken_picture_is_flagged_on_the_page(trained_run, tmp_path):
    page = tmp_path / "report.html"
    html = (trained_run["run_dir"] / "report.html").read_text()
    page.write_text(html.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1))
    attrs, console = load_in_browser(page)
    assert attrs["data-images-decoded"] == str(int(attrs["data-images-total"]) - 1)
    assert "picture(s) of this report could not be shown" in console


def test_evaluate_writes_galleries_with_gradcam_and_its_own_report(trained_run, colour_holdout, tmp_path):
    out = tmp_path / "ev"
    code, stdout, err = run_cli(["evaluate", str(colour_holdout), "--run", str(trained_run["run_dir"]), "--out",
                                 str(out), "--gradcam", "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    wrong = report["misclassified"]
    with Image.open(out / "misclassified.png") as grid, Image.open(out / "correct.png") as right:
        assert grid.size[0] > 100 and right.size[0] > 400  # 3 classes x up to 4 correct images, 6 per row
        pixels = np.asarray(right.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1000  # coloured overlays, not flat colour squares
    assert report["files"]["report_html"] == str(out / "report.html")
    html = (out / "report.html").read_text()
    assert html.count('alt="misclassified images"') == 1 and html.count('alt="correct images"') == 1
    assert f"({report['images'] - wrong} of {report['images']} correct)" in html
    assert "Evaluation on the folder" in html and "<h2>Run</h2>" in html
    attrs, console = load_in_browser(out / "report.html")
    assert attrs["data-images-total"] == attrs["data-images-decoded"] == "5" and console == ""
    code, _, err = run_cli(["evaluate", str(colour_holdout), "--run", str(trained_run["run_dir"]), "--out",
                            str(tmp_path / "x"), "--cam-layer", "block4_conv3"])
    assert code == 64 and "--cam-layer goes with --gradcam" in err


def test_report_can_be_turned_off(tmp_path, colour_data):
    from tests.conftest import TRAIN_ARGS

    code, out, err = run_cli(["train", f"data.train_dir={colour_data}", f"output.dir={tmp_path / 'runs'}",
                              *TRAIN_ARGS, "train.epochs=2", "output.report=false", "promote.min_accuracy=0"])
    assert code == 0, err
    run = Path(out.strip())
    assert not (run / "report.html").exists() and not (run / "evaluation").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["promotion"]["new_accuracy_from"] == f"validation of epoch {summary['best']['epoch']}"
