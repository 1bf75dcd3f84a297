"""Pictures: training curves, confusion matrices, the learning-rate range test. Matplotlib (Agg, no display),
imported only here and only when a picture is drawn; every PNG is written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from vgg_cli.fsio import write_bytes

TRAIN_COLOUR, VAL_COLOUR, MARK_COLOUR = "#1f77b4", "#d62728", "#555555"


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
             path: Path) -> None:
    """Loss against learning rate (log scale) from a range test, with the suggested rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rates, losses, color=TRAIN_COLOUR, alpha=0.3, linewidth=1, label="loss per step")
    ax.plot(rates, smoothed, color=TRAIN_COLOUR, linewidth=2, label="smoothed loss")
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


def image_grid(tiles: Sequence[tuple], path: Path, title: str, columns: int = 6) -> None:
    """A gallery: ``tiles`` of (RGB image as a uint8 array, caption, good?) in a grid, captions green when good
    and red when not. An empty gallery is a picture that says so, never a missing file."""
    plt = _pyplot()
    n = max(1, len(tiles))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.9 * rows + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    if not tiles:
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=14, color=MARK_COLOUR)
    for ax, (image, caption, good) in zip(axes.flat, tiles):
        ax.imshow(image)
        ax.set_title(caption, fontsize=9, color="#1a7f37" if good else "#cf222e", wrap=True)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi=100)
