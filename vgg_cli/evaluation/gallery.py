"""Galleries of an evaluation: the misclassified images, and a sample of correct ones per class, as image grids
with one row per (true) class, labelled with its name; each tile shows its file, the predicted class and its
probability. Optionally each tile is its Grad-CAM overlay (the predicted class's evidence), with a colour bar
that says what the colours mean, so a reader sees *why* the model answered what it did.

Beside the pictures, gallery.json records their layout (which class is on which row, how many tiles, whether the
tiles are Grad-CAM overlays); report.html reads it for its captions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from vgg_cli.data.images import BadImage, load_original
from vgg_cli.fsio import write_json
from vgg_cli.inference.gradcam import GradCam, overlay
from vgg_cli.reporting.plots import class_rows
from vgg_cli.runs.rundir import EvaluationDir

MAX_WRONG = 48  # tiles in misclassified.png: the most confident mistakes
PER_CLASS = 4  # correct images per class in correct.png: one row each
MAX_CLASS_ROWS = 60  # classes in correct.png (the first, in the model's order): a picture a browser still shows
WRONG_COLUMNS = 6  # tiles per row of misclassified.png (a class with more continues on the next row)
THUMB = 192  # thumbnail side, pixels
LAYOUT = "gallery.json"  # in the evaluation folder, beside the pictures


def galleries(model, scored, out_dir: Path, gradcam: bool | str = False, batch_size: int = 32,
              seed: int = 0) -> dict[str, str]:
    """Write misclassified.png, correct.png and gallery.json into ``out_dir`` from ``scoring.Scored``; returns
    their paths. ``gradcam``: tiles are Grad-CAM overlays (of the named conv layer when it is a layer name)."""

    wrong = wrong_by_class(scored.scored)
    right = correct_by_class(scored.scored, scored.classes, seed)
    layer = gradcam if isinstance(gradcam, str) else None
    paths = [r.path for _, rows in wrong + right for r, _ in rows]
    cams = _overlays(model, paths, batch_size, layer) if gradcam else {}
    names = EvaluationDir(out_dir).files()
    files = {k: names[k] for k in ("misclassified_png", "correct_png")}
    files["gallery_json"] = Path(out_dir) / LAYOUT
    how = " (Grad-CAM of the predicted class)" if gradcam else ""
    n_wrong = sum(r.top[0][0] != t for r, t in scored.scored)
    shown = sum(len(rows) for _, rows in wrong)
    layout = {"gradcam": layer or bool(gradcam)}
    columns = _columns(wrong, WRONG_COLUMNS)
    layout["misclassified_png"] = {"columns": columns, "rows": class_rows(
        [(c, f"true: {c}\n{len(rows)} shown", [_tile(r, t, cams) for r, t in rows]) for c, rows in wrong],
        files["misclassified_png"], f"misclassified: {shown} shown of {n_wrong}, one row per true class, the most "
                                    f"confident mistakes first{how}", columns, cam_legend=bool(gradcam))}
    columns = _columns(right, PER_CLASS)
    layout["correct_png"] = {"columns": columns, "rows": class_rows(
        [(c, c, [_tile(r, t, cams) for r, t in rows]) for c, rows in right], files["correct_png"],
        f"correct: up to {PER_CLASS} per class, one row per class{_first(right, scored.classes)}{how}", columns,
        cam_legend=bool(gradcam))}
    write_json(files["gallery_json"], layout)
    return {k: str(v) for k, v in files.items()}


def wrong_by_class(scored: list[tuple]) -> list[tuple[str, list[tuple]]]:
    """The MAX_WRONG most confident mistakes, grouped by true class: [(class, [(prediction, truth), ...])], the
    class of the most confident mistake first, and the most confident first within a class."""
    wrong = [(r, t) for r, t in scored if r.top[0][0] != t]
    wrong.sort(key=lambda rt: -rt[0].top[0][1])
    groups: dict[str, list[tuple]] = {}
    for r, t in wrong[:MAX_WRONG]:
        groups.setdefault(t, []).append((r, t))
    return list(groups.items())


def correct_by_class(scored: list[tuple], classes: list[str], seed: int = 0) -> list[tuple[str, list[tuple]]]:
    """Up to PER_CLASS correctly classified images of each class (a random sample, the same for a seed), in the
    model's class order (the first MAX_CLASS_ROWS classes); a class with none correct has an empty row."""
    rng = random.Random(seed)
    out = []
    for c in classes[:MAX_CLASS_ROWS]:
        of_class = [(r, t) for r, t in scored if t == c and r.top[0][0] == t]
        out.append((c, rng.sample(of_class, min(PER_CLASS, len(of_class)))))
    return out


def _first(shown: list, classes: list[str]) -> str:
    return f" (the first {len(shown)} of {len(classes)} classes)" if len(shown) < len(classes) else ""


def _columns(groups: list[tuple], most: int) -> int:
    """As many columns as the longest row needs (at most ``most``): a few mistakes are not a wide, empty picture
    that the page shrinks."""
    return max(1, min(most, max((len(rows) for _, rows in groups), default=1)))


def _tile(r, truth: str, cams: dict) -> tuple:
    """(thumbnail, caption, correct?); the row label names the true class, so the caption does not repeat it."""
    predicted, p = r.top[0]
    name = Path(r.path).name
    name = name if len(name) <= 30 else f"{name[:14]}\u2026{name[-15:]}"  # fits its tile, keeps the extension
    caption = f"{name}\npredicted {predicted} {p:.2f}" if predicted != truth else f"{name}\n{truth} {p:.2f}"
    return thumbnail(cams.get(r.path) or r.path), caption, predicted == truth


def thumbnail(image) -> np.ndarray:
    """A thumbnail of an image file (or a PIL image) at most THUMB pixels a side; unreadable -> grey."""
    try:
        img = load_original(image) if isinstance(image, str) else image
    except BadImage:
        return np.full((THUMB, THUMB, 3), 128, dtype=np.uint8)
    img = img.copy()
    img.thumbnail((THUMB, THUMB))
    return np.asarray(img)


def _overlays(model, paths: list[str], batch_size: int, layer: str | None) -> dict:
    """{path: Grad-CAM overlay (PIL) of the predicted class}."""

    if not paths:
        return {}
    return {path: overlay(path, c) for path, c in GradCam(model, layer).of_files(paths, None, batch_size)}
