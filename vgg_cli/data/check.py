"""`vgg check DATA_DIR`: the dataset doctor. Scans like training does (same decode, same split, same cache) and
reports what would hurt a model, without training. The dataset is only read."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vgg_cli.data.layout import apply_layout
from vgg_cli.data.scan import TRAIN, VAL, DatasetIndex, scan

IMBALANCE_WARN = 10.0  # largest class / smallest class


def check_dataset(cfg, cache_dir: Path | None, min_side: int) -> dict:
    """The doctor's report on ``cfg.data``, in the layout it has (class folders, or split folders)."""
    cfg, layout = apply_layout(cfg)
    index = scan(cfg.data, cache_dir=cache_dir)
    return {"layout": layout.kind, "layout_description": layout.describe(), "test_dir": layout.test_dir,
            **report(index, min_side)}


def report(index: DatasetIndex, min_side: int) -> dict:
    counts = index.counts()
    totals = {c: v[TRAIN] + v[VAL] for c, v in counts.items()}
    imbalance = max(totals.values()) / max(1, min(totals.values()))
    by_hash: dict[str, list] = defaultdict(list)
    for e in index.files:
        by_hash[e.sha1].append(e)
    cross_class, cross_split = [], []
    for group in by_hash.values():
        if len(group) < 2:
            continue
        paths = sorted(f"{'val_dir:' if e.source == 'val_dir' else ''}{e.path}" for e in group)
        if len({e.label for e in group}) > 1:
            cross_class.append(paths)
        elif len({e.split for e in group}) > 1:
            cross_split.append(paths)
    small = sorted(f"{path} ({w}x{h})" for (source, path), (w, h) in index.dims.items() if min(w, h) < min_side)
    errors, warnings = [], []
    folders = [x for x in index.skipped if x["path"].endswith("/")]  # folder links left out (see scan's link rule)
    if len(index.skipped) > len(folders):
        errors.append(f"{len(index.skipped) - len(folders)} unreadable file(s)")
    if folders:
        errors.append(f"{len(folders)} folder(s) not walked (links to a loop or another class, or too deep)")
    if index.excluded_classes:
        warnings.append(f"{len(index.excluded_classes)} class folder(s) left out")
    if cross_class:
        errors.append(f"{len(cross_class)} image(s) appear in more than one class (same content)")
    if cross_split:
        warnings.append(f"{len(cross_split)} image(s) appear in both train and val (same content): validation "
                        f"overstates accuracy")
    if imbalance > IMBALANCE_WARN:
        warnings.append(f"classes are imbalanced {imbalance:.1f}:1")
    if small:
        warnings.append(f"{len(small)} image(s) smaller than {min_side} px on a side")
    return {
        "train_dir": index.train_dir, "val_dir": index.val_dir, "classes": index.classes, "counts": counts,
        "images": len(index.files), "imbalance_ratio": round(imbalance, 2), "skipped": index.skipped,
        "excluded_classes": index.excluded_classes, "duplicates_across_classes": cross_class,
        "duplicates_across_splits": cross_split, "small_images": small, "errors": errors, "warnings": warnings,
        "fingerprint": index.fingerprint,
    }


def format_report(r: dict) -> str:
    width = max(len("class"), *(len(c) for c in r["classes"]))
    lines = [f"dataset {r['train_dir']}" + (f" (validation: {r['val_dir']})" if r["val_dir"] else ""),
             f"layout: {r['layout_description']}" if r.get("layout_description") else "",
             f"{len(r['classes'])} classes, {r['images']} usable images, imbalance {r['imbalance_ratio']}:1", ""]
    lines = [line for i, line in enumerate(lines) if line or i == len(lines) - 1]
    lines.append(f"  {'class':<{width}}  {'train':>6}  {'val':>5}")
    for c in r["classes"]:
        lines.append(f"  {c:<{width}}  {r['counts'][c][TRAIN]:>6}  {r['counts'][c][VAL]:>5}")
    for s in r["skipped"]:
        lines.append(f"{'not walked' if s['path'].endswith('/') else 'unreadable'}: {s['path']}: {s['reason']}")
    for c in r["excluded_classes"]:
        lines.append(f"left out: class {c['class']!r}: {c['reason']}")
    for group in r["duplicates_across_classes"]:
        lines.append(f"same image in several classes: {', '.join(group)}")
    for group in r["duplicates_across_splits"]:
        lines.append(f"same image in train and val: {', '.join(group)}")
    for s in r["small_images"][:50]:
        lines.append(f"small: {s}")
    if len(r["small_images"]) > 50:
        lines.append(f"... and {len(r['small_images']) - 50} more small images")
    lines.append("")
    if r["errors"]:
        lines.append("errors: " + "; ".join(r["errors"]))
    if r["warnings"]:
        lines.append("warnings: " + "; ".join(r["warnings"]))
    if not r["errors"] and not r["warnings"]:
        lines.append("ok: nothing to fix")
    return "\n".join(lines) + "\n"
