#!/usr/bin/env python3
"""Generate the default demo dataset offline: coloured shapes on noisy backgrounds, one folder per class.

    python scripts/make_sample_data.py data/shapes            # train set (3 classes x 80 images)
    python scripts/make_sample_data.py data/shapes-holdout --per-class 10 --seed 7

Classes differ by shape only (colours, sizes, positions and backgrounds are random), so a model must learn
shape to beat chance. Deterministic for a given --seed. Needs only Pillow and NumPy.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle")


def draw(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    bg = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    arr = np.clip(bg + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    while True:  # a colour that stands out from the background
        fg = rng.integers(0, 256, 3)
        if np.abs(fg - bg).sum() > 200:
            break
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r + 2, size - r - 2, 2)
    colour = tuple(int(c) for c in fg)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        a = rng.uniform(0, math.pi / 2)
        pts = [(cx + r * math.cos(a + k * math.pi / 2), cy + r * math.sin(a + k * math.pi / 2)) for k in range(4)]
        d.polygon(pts, fill=colour)
    else:
        a = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3)) for k in range(3)]
        d.polygon(pts, fill=colour)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to create (one subfolder per class)")
    ap.add_argument("--per-class", type=int, default=80)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for kind in CLASSES:
        folder = args.out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            draw(kind, args.size, rng).save(folder / f"{kind}_{i:04d}.png")
    print(f"wrote {args.per_class * len(CLASSES)} images in {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
