"""Pictures: training curves, confusion matrices, the learning-rate range test, the galleries. Matplotlib (Agg, no
display), imported only here and only when a picture is drawn; every PNG is written atomically."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from vgg_cli.fsio import write_bytes

TRAIN_COLOUR, VAL_COLOUR, MARK_COLOUR = "#1f77b4", "#d62728", "#555555"
GOOD_COLOUR, BAD_COLOUR = "#1a7f37", "#cf222e"  # gallery captions: correct, wrong
# gallery geometry, inches: label column, cell width, thumbnail side, caption above it, a row, an empty row
G_LABEL, G_CELL, G_THUMB, G_CAPTION, G_ROW, G_EMPTY = 1.8, 2.2, 2.0, 0.45, 2.7, 0.7


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    write_bytes(Path(path), buf.getvalue())


def training_curves(rows: Sequence[dict], path: Path, best_epoch: int | None = None, monitor: str = "") -> None:
    """Loss and accuracy per epoch, training and validation; phase boundaries and the best epoch marked."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    panels = [("loss", "loss (cross-entropy)"), ("accuracy", "accuracy")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, title) in zip(axes, panels):
        for name, colour, label in ((key, TRAIN_COLOUR, "training"), (f"val_{key}", VAL_COLOUR, "validation")):
            ys = [r.get(name) for r in rows]
            if any(y is not None for y in ys):
                ax.plot(epochs, [np.nan if y is None else y for y in ys], marker="o", markersize=4, linewidth=2,
                        color=colour, label=label)
        if best_epoch is not None:
            best = rows[best_epoch - 1]
            value = best.get(f"val_{key}", best.get(key))
            if value is not None:
                ax.plot([best_epoch], [value], marker="*", markersize=16, color="#f2b01e", markeredgecolor="black",
                        linestyle="none", label=f"best epoch ({best_epoch}, by {monitor or 'monitor'})", zorder=5)
        _mark_phases(ax, rows)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if key == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    _save(fig, path)


def _mark_phases(ax, rows: Sequence[dict]) -> None:
    for prev, row in zip(rows, rows[1:]):
        if row.get("phase", 1) != prev.get("phase", 1):
            x = (prev["epoch"] + row["epoch"]) / 2
            ax.axvline(x, color=MARK_COLOUR, linestyle="--", linewidth=1.2)
            ax.text(x, 0.98, f" phase {row.get('phase')}: fine-tuning", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=9, color=MARK_COLOUR)


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, normalised: bool) -> None:
    """Rows: true class; columns: predicted class. ``normalised``: each row divided by its total (recall on the
    diagonal); rows without images stay empty."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    if normalised:
        totals = m.sum(axis=1, keepdims=True)
        m = np.divide(m, totals, out=np.full_like(m, np.nan), where=totals > 0)
    k = len(classes)
    side = min(max(4.5, 0.55 * k + 2.5), 30)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalised else max(1.0, np.nanmax(m)))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=list(classes), rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (each row sums to 1)" if normalised else " (image counts)"))
    if k <= 30:
        threshold = (1 if normalised else np.nanmax(m)) / 2
        for i in range(k):
            for j in range(k):
                if np.isnan(m[i, j]):
                    continue
                text = f"{m[i, j]:.2f}" if normalised else f"{int(m[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=9 if k <= 12 else 7,
                        color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    _save(fig, path)


def lr_range(rates: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggested: float | None,
             path: Path, falls: tuple[float, float] | None = None, fall_label: str = "loss falls",
             guess_loss: float | None = None) -> None:
    """Loss against learning rate (log scale) from a range test, with the suggested rate; shaded, ``falls``: the
    rates where the fall the suggestion came from runs (``fall_label``); dotted, ``guess_loss``: what guessing the
    class shares scores."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rates, losses, color=TRAIN_COLOUR, alpha=0.3, linewidth=1, label="loss per step")
    ax.plot(rates, smoothed, color=TRAIN_COLOUR, linewidth=2, label="smoothed loss")
    if guess_loss is not None:
        ax.axhline(guess_loss, color=MARK_COLOUR, linestyle=":", label=f"guessing the class shares ({guess_loss:.3g})")
    if falls is not None:
        ax.axvspan(falls[0], falls[1], color=MARK_COLOUR, alpha=0.12,
                   label=f"{fall_label} ({falls[0]:.2g} to {falls[1]:.2g})")
    if suggested is not None:
        ax.axvline(suggested, color=VAL_COLOUR, linestyle="--", label=f"suggested rate {suggested:.2g}")
    ax.set_xscale("log")
    finite = np.asarray([s for s in smoothed if np.isfinite(s)])
    if finite.size:
        low, high = float(finite.min()), float(np.percentile(finite, 95))
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def class_rows(groups: Sequence[tuple], path: Path, title: str, columns: int = 6,
               cam_legend: bool = False) -> list[dict]:
    """A gallery with one row per class: ``groups`` of (class name, row label, tiles), tiles of (RGB image as a
    uint8 array, caption, good?), captions green when good and red when not. A class with more tiles than
    ``columns`` continues on the rows below its label; a class without tiles is a low row that says "none"; a
    thin line separates two classes. ``cam_legend``: a colour bar explaining the Grad-CAM colours (jet: red =
    strongest evidence). Laid out by hand (no layout engine: hundreds of tiles draw in seconds). Returns the
    layout, one {"class", "label", "tiles", "first_row", "rows"} per group (report.html and the tests read it)."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    cols, layout, row = max(1, columns), [], 0
    for name, label, tiles in groups:
        n_rows = max(1, -(-len(tiles) // cols))
        layout.append({"class": name, "label": label, "tiles": len(tiles), "first_row": row, "rows": n_rows})
        row += n_rows
    heights = [G_ROW] * max(1, row)
    for place in layout:
        if not place["tiles"]:
            heights[place["first_row"]] = G_EMPTY
    width = G_LABEL + cols * G_CELL + 0.1
    title = textwrap.fill(title, max(30, int(width * 10)))  # a narrow gallery: its title wraps
    top = 0.3 + 0.2 * (title.count("\n") + 1)
    tops = [top + sum(heights[:r]) for r in range(len(heights))]  # inches from the figure's top edge
    fig = plt.figure(figsize=(width, tops[-1] + heights[-1] + (0.9 if cam_legend else 0.1)))
    inches = fig.get_size_inches()
    fig.text(0.5, 1 - 0.2 / inches[1], title, ha="center", va="top", fontsize=11)
    if not groups:  # an empty gallery is a picture that says so, never a missing file
        fig.text(0.5, 1 - (top + G_ROW / 2) / inches[1], "none", ha="center", va="center", fontsize=14,
                 color=MARK_COLOUR)
    for (name, label, tiles), place in zip(groups, layout):
        first = tops[place["first_row"]]
        if place["first_row"]:
            fig.add_artist(Line2D([0.01, 0.99], [1 - (first - 0.05) / inches[1]] * 2, color="#d0d7de", linewidth=1.2))
        middle = first + (G_CAPTION + G_THUMB / 2 if tiles else heights[place["first_row"]] / 2)
        _row_label(fig, label, (G_LABEL - 0.15) / inches[0], 1 - middle / inches[1])
        if not tiles:
            fig.text((G_LABEL + 0.1) / inches[0], 1 - middle / inches[1], "none", ha="left", va="center",
                     fontsize=12, color=MARK_COLOUR)
        for i, (image, caption, good) in enumerate(tiles):
            x = G_LABEL + (i % cols) * G_CELL + (G_CELL - G_THUMB) / 2
            y = tops[place["first_row"] + i // cols] + G_CAPTION + G_THUMB
            ax = fig.add_axes((x / inches[0], 1 - y / inches[1], G_THUMB / inches[0], G_THUMB / inches[1]))
            ax.imshow(image)
            ax.set_axis_off()  # the caption is figure text: axes titles cost a layout pass per tile
            fig.text((x + G_THUMB / 2) / inches[0], 1 - (y - G_THUMB - 0.05) / inches[1], caption, ha="center",
                     va="bottom", fontsize=9, color=GOOD_COLOUR if good else BAD_COLOUR)
    if cam_legend:
        bar_width = min(cols * G_CELL, 6.0)
        _cam_colour_bar(fig, ((G_LABEL + (cols * G_CELL - bar_width) / 2) / inches[0], 0.62 / inches[1],
                              bar_width / inches[0], 0.16 / inches[1]))
    _save(fig, path, dpi=100)
    return layout


def _row_label(fig, label: str, x: float, y: float) -> None:
    """The class name at the left of its (first) row."""
    fig.text(x, y, label, ha="right", va="center", multialignment="center", fontsize=12, fontweight="bold",
             color="#1f2328", bbox={"boxstyle": "round,pad=0.4", "facecolor": "#f6f8fa", "edgecolor": "#d0d7de"})


def _cam_colour_bar(fig, rect: tuple) -> None:
    """What the overlay colours mean: the jet colour map of ``inference.gradcam.overlay``, weak to strong."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), cax=fig.add_axes(rect), orientation="horizontal",
                       ticks=[0, 0.5, 1])
    bar.ax.set_xticklabels(["none", "half", "strongest"], fontsize=9)
    bar.set_label("Grad-CAM: red = where the evidence for the predicted class\nis strongest (in each image), "
                  "blue = little or none", fontsize=10)


def reliability_diagram(bins: dict, temperature: float, path: Path) -> None:
    """Accuracy against confidence per equal-width bin, before (temperature 1) and after the run's temperature;
    bars' widths are the bins, the diagonal is perfect calibration, the lower panel the share of images per bin."""
    plt = _pyplot()
    fig, (ax, share) = plt.subplots(2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color=MARK_COLOUR, linestyle=":", label="perfectly calibrated")
    for key, colour, label in (("before", TRAIN_COLOUR, "before (temperature 1)"),
                               ("after", VAL_COLOUR, f"after (temperature {temperature:.3g})")):
        rows = [b for b in bins[key] if b["images"]]
        ax.plot([b["confidence"] for b in rows], [b["accuracy"] for b in rows], marker="o", color=colour,
                label=label)
        total = sum(b["images"] for b in bins[key]) or 1
        share.bar([(b["lo"] + b["hi"]) / 2 for b in bins[key]], [b["images"] / total for b in bins[key]],
                  width=1 / len(bins[key]) * (0.45 if key == "before" else 0.3), color=colour, alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("reliability diagram (15 equal-width bins)")
    ax.legend(loc="upper left", fontsize=8)
    share.set_xlabel("confidence (top probability)")
    share.set_ylabel("share of images")
    fig.tight_layout()
    _save(fig, path)


def coverage_plot(curves: dict, accepted: float, accuracy_accepted: float | None, path: Path) -> None:
    """Accuracy of the accepted predictions against the share accepted, accepting the most confident first (by
    probability, and by the out-of-distribution score when there is one); the point: the run's threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, colour, label in (("probability", TRAIN_COLOUR, "by top probability"),
                               ("ood_score", VAL_COLOUR, "by out-of-distribution score")):
        if curves.get(key):
            ax.plot([p["coverage"] for p in curves[key]], [p["accuracy"] for p in curves[key]], color=colour,
                    label=label)
    if accuracy_accepted is not None:
        ax.plot([accepted], [accuracy_accepted], marker="o", color=MARK_COLOUR, linestyle="none",
                label=f"as answered: {accepted:.0%} accepted")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("share of images accepted")
    ax.set_ylabel("accuracy of the accepted")
    ax.set_title("coverage")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
