#!/usr/bin/env python3
"""Generate the demo dataset offline, one folder per class (deterministic for a given --seed).

    python scripts/make_sample_data.py data/textures                       # 4 classes x 60 images, 64 px
    python scripts/make_sample_data.py data/textures-holdout --per-class 10 --seed 7
    python scripts/make_sample_data.py data/shapes --kind shapes           # 3 shape classes (harder)

textures: checks, dots, stripes, waves. Each class has its own pattern and its own family of hues, with random
scale, angle, phase and shades, so that even a backbone with random weights (all this offline machine can build
without ImageNet weights) separates them by colour statistics, while a pretrained backbone can use the pattern.
shapes: circle, square, triangle in random colours on random backgrounds; only shape tells them apart, which
needs ImageNet (or well-trained) features. Needs only Pillow and NumPy.
digits: real scans, not generated: the UCI handwritten digits (1,797 8x8 grey images of 0-9 written by 43
people) that scikit-learn ships inside its wheel (`pip install scikit-learn`; nothing is downloaded), upscaled
to --size. --part train / holdout splits them 4:1 by a fixed rule (every 5th image of a class is held out), so a
model trained on one part can be scored on images it never saw: `vgg evaluate HOLDOUT --run RUN`.
--layout splits writes OUT/train, OUT/val and OUT/test (digits: 3/5, 1/5 and the held-out 1/5 by the same fixed
rule; generated kinds: 3:1:1), the layout Ultralytics, ImageNet and Kaggle datasets have: `vgg train OUT`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")
TEXTURES = ("checks", "dots", "stripes", "waves")


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


# Each texture class has its own family of hues (centre in degrees, +-35 jitter), so a backbone with random
# weights (the offline demo) can tell classes apart by colour while ImageNet features can also use the pattern.
HUE_CENTRE = {"checks": 0, "dots": 90, "stripes": 180, "waves": 270}


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb((h % 360) / 360, s, v)) * 255


def _two_colours(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h = HUE_CENTRE[kind] + rng.uniform(-35, 35)
    light = _hsv(h, rng.uniform(0.45, 1.0), rng.uniform(0.65, 1.0))
    dark = _hsv(h + rng.uniform(-15, 15), rng.uniform(0.3, 1.0), rng.uniform(0.1, 0.45))
    return (light, dark) if rng.random() < 0.5 else (dark, light)


def texture(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A texture: the class sets the pattern and the hue family; scale, angle, phase and shades are random."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.16, 0.3) * size
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / period + rng.uniform(0, 1)
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period + rng.uniform(0, 1)
    if kind == "stripes":
        mask = (np.floor(2 * u) % 2).astype(np.float64)
    elif kind == "checks":
        mask = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    elif kind == "dots":
        mask = ((((u % 1) - 0.5) ** 2 + ((v % 1) - 0.5) ** 2) < rng.uniform(0.06, 0.1)).astype(np.float64)
    else:  # waves: smooth sinusoidal bands
        mask = 0.5 + 0.5 * np.sin(2 * math.pi * u + 1.5 * np.sin(2 * math.pi * v * 0.5))
    a, b = _two_colours(kind, rng)
    arr = a * (1 - mask[..., None]) + b * mask[..., None] + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.5))


def write_digits(out: Path, size: int, part: str, per_class: int | None) -> int:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("--kind digits needs scikit-learn (it ships the UCI digits): pip install scikit-learn")
    digits = load_digits()
    count = 0
    for label in range(10):
        rows = np.flatnonzero(digits.target == label)
        parts = {"holdout": (4,), "train": (0, 1, 2, 3), "val": (3,), "fit": (0, 1, 2), "all": (0, 1, 2, 3, 4)}
        keep = [r for j, r in enumerate(rows) if j % 5 in parts[part]]
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for r in keep[:per_class]:
            grey = (digits.images[r] * (255 / 16)).astype(np.uint8)  # 17 grey levels, 0..16
            Image.fromarray(grey, "L").resize((size, size), Image.BICUBIC).convert("RGB").save(
                folder / f"digit{label}_{r:04d}.png")
            count += 1
    return count


def write_splits(args) -> None:
    """OUT/train, OUT/val, OUT/test."""
    if args.kind == "digits":
        for split, part in (("train", "fit"), ("val", "val"), ("test", "holdout")):
            n = write_digits(args.out / split, args.size, part, args.per_class)
            print(f"wrote {n} digit scans in 10 classes to {args.out / split}")
        return
    per_class = args.per_class or 80
    for split, share, seed in (("train", 0.6, args.seed), ("val", 0.2, args.seed + 1), ("test", 0.2, args.seed + 2)):
        n = max(1, round(per_class * share))
        rng = np.random.default_rng(seed)
        classes, make = (TEXTURES, texture) if args.kind == "textures" else (SHAPES, draw)
        for kind in classes:
            folder = args.out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make(kind, args.size, rng).save(folder / f"{kind}_{i:04d}.png")
        print(f"wrote {n * len(classes)} {args.kind} images in {len(classes)} classes to {args.out / split}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to create (one subfolder per class)")
    ap.add_argument("--per-class", type=int, default=None, help="images per class (default 80; digits: all)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=["textures", "shapes", "digits"], default="textures",
                    help="textures (default): 4 pattern classes; shapes: 3 shape classes (harder without ImageNet); "
                         "digits: real handwritten-digit scans from scikit-learn")
    ap.add_argument("--part", choices=["all", "train", "holdout"], default="all",
                    help="digits only: all images, or the 4/5 training part, or the held-out 1/5")
    ap.add_argument("--layout", choices=["classes", "splits"], default="classes",
                    help="classes: OUT/<class>/; splits: OUT/train/<class>/, OUT/val/<class>/, OUT/test/<class>/")
    args = ap.parse_args()
    if args.layout == "splits":
        write_splits(args)
        return
    if args.kind == "digits":
        n = write_digits(args.out, args.size, args.part, args.per_class)
        print(f"wrote {n} digit scans ({args.part}) in 10 classes to {args.out}")
        return
    args.per_class = args.per_class or 80
    rng = np.random.default_rng(args.seed)
    classes, make = (TEXTURES, texture) if args.kind == "textures" else (SHAPES, draw)
    for kind in classes:
        folder = args.out / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            make(kind, args.size, rng).save(folder / f"{kind}_{i:04d}.png")
    print(f"wrote {args.per_class * len(classes)} {args.kind} images in {len(classes)} classes to {args.out}")


if __name__ == "__main__":
    main()
