"""Galleries of an evaluation: the misclassified images, and a sample of correct ones per class, as image grids
with true class, predicted class and probability; optionally each tile is its Grad-CAM overlay (the predicted
class's evidence), so a reader sees *why* the model answered what it did."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from vgg_cli.data.images import BadImage, load_original
from vgg_cli.runs.rundir import EvaluationDir

MAX_WRONG = 48  # tiles in misclassified.png: the most confident mistakes first
PER_CLASS = 4  # correct images per class in correct.png
THUMB = 192  # thumbnail side, pixels


def galleries(model, scored, out_dir: Path, gradcam: bool | str = False, batch_size: int = 32,
              seed: int = 0) -> dict[str, str]:
    """Write misclassified.png and correct.png into ``out_dir`` from ``evaluate.Scored``; returns their paths.
    ``gradcam``: tiles are Grad-CAM overlays (of the named conv layer when it is a layer name)."""
    from vgg_cli.reporting.plots import image_grid

    wrong = [(r, t) for r, t in scored.scored if r.top[0][0] != t]
    wrong.sort(key=lambda rt: -rt[0].top[0][1])
    wrong = wrong[:MAX_WRONG]
    rng = random.Random(seed)
    right: list[tuple] = []
    for c in scored.classes:
        of_class = [(r, t) for r, t in scored.scored if t == c and r.top[0][0] == t]
        right += rng.sample(of_class, min(PER_CLASS, len(of_class)))
    layer = gradcam if isinstance(gradcam, str) else None
    cams = _overlays(model, [r.path for r, _ in wrong + right], batch_size, layer) if gradcam else {}
    names = EvaluationDir(out_dir).files()
    files = {k: names[k] for k in ("misclassified_png", "correct_png")}
    how = " (Grad-CAM of the predicted class)" if gradcam else ""
    image_grid([_tile(r, t, cams) for r, t in wrong], files["misclassified_png"],
               f"misclassified: {len(wrong)} shown of {sum(r.top[0][0] != t for r, t in scored.scored)}, "
               f"most confident first{how}")
    image_grid([_tile(r, t, cams) for r, t in right], files["correct_png"],
               f"correct: up to {PER_CLASS} per class{how}")
    return {k: str(v) for k, v in files.items()}


def _tile(r, truth: str, cams: dict) -> tuple:
    predicted, p = r.top[0]
    caption = f"{Path(r.path).name}\ntrue {truth}\npredicted {predicted} {p:.2f}" if predicted != truth else \
        f"{Path(r.path).name}\n{truth} {p:.2f}"
    return _thumbnail(cams.get(r.path) or r.path), caption, predicted == truth


def _thumbnail(image) -> np.ndarray:
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
    from vgg_cli.inference.gradcam import GradCam, overlay

    if not paths:
        return {}
    return {path: overlay(path, c.heatmap) for path, c in GradCam(model, layer).of_files(paths, None, batch_size)}
