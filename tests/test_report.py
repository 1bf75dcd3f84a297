"""What a person sees: the evaluation at the end of training, the galleries and report.html, loaded in a real
headless browser (Debian's chromium; .ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import escape, unescape
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow
COLOUR = {"ok": "green", "stalled": "amber", "diverged": "red", "recovered": "amber"}  # the health badge's


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("these tests need a headless browser: apt-get install chromium (.ci/run does)")
    return path


def load_in_browser(page: Path, screenshot: Path | None = None) -> tuple[dict, str, str]:
    """Load ``page`` from its file:// URL in headless Chromium: (attributes of <body> after load, console lines,
    the page's DOM after load)."""
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
    return attrs, "\n".join(console), p.stdout


class Tile(NamedTuple):
    raw: str  # data-value: the number itself
    shown: str  # what a person reads


def headline(dom: str) -> dict[str, Tile]:
    """The headline tiles of a report's DOM (after load): {data-key: Tile}."""
    found = re.findall(r'data-key="([^"]+)" data-value="([^"]*)"><div class="k">[^<]*</div><div class="v">([^<]*)<',
                       dom)
    assert found, dom[:2000]
    return {k: Tile(unescape(raw), unescape(shown)) for k, raw, shown in found}


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
    assert n_images == 7  # curves, two confusion matrices, reliability diagram, coverage curve, two galleries
    assert f"vgg run {run.name}" in html and "promoted to production" in html
    assert escape(promotion["reason"]) in html
    attrs, console, dom = load_in_browser(run / "report.html", tmp_path / "report.png")
    assert attrs.get("data-images-total") == str(n_images) == attrs.get("data-images-decoded"), attrs
    assert console == ""
    shot = np.asarray(Image.open(tmp_path / "report.png").convert("L"))
    assert shot.shape == (3000, 1100) and shot.std() > 10  # a page was drawn, not a blank window

    # the headline comes first and shows the evaluation's and the config's numbers
    assert dom.index('class="headline"') < dom.index("<h2>")
    config = yaml.safe_load((run / "config.yaml").read_text())
    shown = headline(dom)
    assert float(shown["accuracy"].raw) == pytest.approx(report["accuracy"], abs=1e-9)
    assert shown["accuracy"].shown == f"{100 * report['accuracy']:.1f}%"
    assert shown["top5_accuracy"].shown == "\u2014"  # 3 classes: top-5 is not measured
    assert shown["image_size"].raw == str(config["data"]["image_size"]) and shown["image_size"].shown == "32 px"
    assert shown["freeze_blocks"].raw == ",".join(map(str, config["model"]["freeze_blocks"]))
    assert shown["images"].raw == f"{summary['images']['train']}/{summary['images']['val']}"
    assert shown["classes"].shown == str(len(summary["classes"]))
    assert shown["data"].shown == config["data"]["train_dir"]
    phase = summary["phases"][0]
    assert float(shown["learning_rate"].raw) == pytest.approx(phase["learning_rate"])
    assert shown["learning_rate"].shown.endswith("(auto)") == bool(phase.get("learning_rate_auto"))
    assert shown["device"].shown.startswith(summary["device"]["backend"]) and summary["device"]["precision"] in \
        shown["device"].shown
    assert float(shown["time"].raw) == pytest.approx(summary["timings"]["this_session_total_s"])
    status = summary["health"]["status"]
    assert re.search(rf'class="badge {COLOUR[status]} health health-{status}"', dom), status

    # the correct gallery has one row per class, labelled with it, in the model's class order
    layout = json.loads((val / "gallery.json").read_text())
    rows = layout["correct_png"]["rows"]
    assert [r["class"] for r in rows] == summary["classes"] and [r["first_row"] for r in rows] == [0, 1, 2]
    assert all(r["rows"] == 1 and 0 < r["tiles"] <= 4 for r in rows)
    with Image.open(val / "correct.png") as right:
        assert right.size[1] > 3 * 250  # three rows of thumbnails, not one row of 12 tiles wrapped
    wrong = layout["misclassified_png"]["rows"]
    assert sum(r["tiles"] for r in wrong) == report["misclassified"]


def test_a_broken_picture_is_flagged_on_the_page(trained_run, tmp_path):
    page = tmp_path / "report.html"
    html = (trained_run["run_dir"] / "report.html").read_text()
    page.write_text(html.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1))
    attrs, console, _ = load_in_browser(page)
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
    attrs, console, dom = load_in_browser(out / "report.html")
    assert attrs["data-images-total"] == attrs["data-images-decoded"] == "7" and console == ""
    # the Grad-CAM colours are explained above both galleries, and drawn as a colour bar under them
    layout = json.loads(Path(report["files"]["gallery_json"]).read_text())
    assert layout["gradcam"] is True and dom.count('class="caption cam-legend"') == 2
    assert "red = where it is strongest" in dom
    with Image.open(out / "correct.png") as right:
        bar = np.asarray(right.convert("RGB"))[-160:].reshape(-1, 3).astype(int)
    reds = ((bar[:, 0] > 120) & (bar[:, 1] < 40) & (bar[:, 2] < 40)).sum()
    blues = ((bar[:, 2] > 120) & (bar[:, 0] < 40) & (bar[:, 1] < 40)).sum()
    assert reds > 200 and blues > 200, (reds, blues)  # the jet bar's two ends, below the last row
    assert [r["class"] for r in layout["correct_png"]["rows"]] == report["classes"]
    shown = headline(dom)
    assert float(shown["accuracy"].raw) == pytest.approx(report["accuracy"], abs=1e-9)  # the folder's, not val
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


@pytest.mark.parametrize("status, warning, colour", [("stalled", "the model is not learning: lower the rate", "amber"),
                                                      ("diverged", "the loss became NaN at epoch 2", "red"),
                                                      ("recovered", "it stalled for 3 epochs, then learned", "amber"),
                                                      ("recovered", None, "green"), ("ok", None, "green")])
def test_the_health_state_is_a_coloured_badge(trained_run, tmp_path, status, warning, colour):
    from vgg_cli.reporting.report import write_run_report
    from vgg_cli.runs.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], run, symlinks=True)
    summary = json.loads((run / "summary.json").read_text())
    summary["health"] = {"status": status, "stalled_epochs": [1, 2, 3] if warning else [], "warning": warning,
                         "diverged": None}
    (run / "summary.json").write_text(json.dumps(summary))
    evaluation = json.loads((run / "evaluation" / "val" / "report.json").read_text())
    html = write_run_report(RunDir(run), evaluation).read_text()
    badge = rf'<span class="badge {colour} health health-{status}" data-health="{status}"'
    assert len(re.findall(badge, html)) == 2, html[:3000]  # in the headline and in the run's table
    assert ("health-warning" in html) == bool(warning)
    if warning:
        assert f'<div class="callout {colour} health-warning"><b>Training health:</b> {escape(warning)}</div>' in html
    if status == "stalled":  # and the browser paints it amber, above the fold
        _, console, dom = load_in_browser(run / "report.html", tmp_path / "shot.png")
        assert console == "" and re.search(badge, dom)
        top = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))[:900].reshape(-1, 3).astype(int)
        amber = (np.abs(top - [0xFF, 0xF8, 0xC5]).sum(axis=1) < 12).sum()
        assert amber > 2000, amber  # the badge and the warning's box


def test_gallery_rows_are_classes(tmp_path):
    """plots.class_rows: one row per class, a class with more tiles than columns continues below its label, a
    class without tiles is a low row; the picture grows with the classes."""
    from vgg_cli.reporting.plots import class_rows

    tile = (np.full((48, 48, 3), 200, np.uint8), "x.png\nred 0.90", True)
    heights = {}
    for n in (2, 5):
        layout = class_rows([(f"c{i}", f"c{i}", [tile] * 3) for i in range(n)], tmp_path / f"{n}.png", "t", 4)
        assert [(r["class"], r["first_row"], r["rows"], r["tiles"]) for r in layout] == \
            [(f"c{i}", i, 1, 3) for i in range(n)]
        heights[n] = Image.open(tmp_path / f"{n}.png").size[1]
    per_row = (heights[5] - heights[2]) / 3
    assert per_row > 150 and heights[2] > 2 * per_row * 0.9, heights
    layout = class_rows([("a", "a", [tile] * 9), ("b", "b", []), ("c", "c", [tile])], tmp_path / "m.png", "t", 4)
    assert [(r["first_row"], r["rows"]) for r in layout] == [(0, 3), (3, 1), (4, 1)]
    assert Image.open(tmp_path / "m.png").size[1] < heights[5]  # the empty row is low


def test_mistakes_are_grouped_by_true_class_most_confident_first():
    from vgg_cli.evaluation.gallery import MAX_WRONG, correct_by_class, wrong_by_class

    def p(label, prob, name="f"):
        return SimpleNamespace(path=name, top=[(label, prob)])

    scored = [(p("b", 0.6), "a"), (p("a", 0.9), "b"), (p("c", 0.7), "a"), (p("a", 0.8), "a"), (p("a", 0.5), "c")]
    groups = wrong_by_class(scored)
    assert [(c, [r.top[0][1] for r, _ in rows]) for c, rows in groups] == [("b", [0.9]), ("a", [0.7, 0.6]),
                                                                            ("c", [0.5])]
    many = [(p("b", i / 1000), "a") for i in range(MAX_WRONG + 10)]
    assert sum(len(rows) for _, rows in wrong_by_class(many)) == MAX_WRONG
    right = correct_by_class(scored, ["a", "b", "c"])
    assert [(c, len(rows)) for c, rows in right] == [("a", 1), ("b", 0), ("c", 0)]
