"""`vgg check DATA_DIR`: the dataset doctor. Scans like training does (same decode, same split, same cache) and
reports what would hurt a model, without training. The dataset is only read."""

from __future__ import annotations

from pathlib import Path

from vgg_cli.data.index import TRAIN, VAL, DatasetIndex
from vgg_cli.data.layout import apply_layout
from vgg_cli.data.scan import scan, scan_labelled

IMBALANCE_WARN = 10.0  # largest class / smallest class
MAX_LISTED = 50  # duplicate groups listed one per line (all are in --json and data.json)


def check_dataset(cfg, cache_dir: Path | None, min_side: int) -> dict:
    """The doctor's report on ``cfg.data``, in the layout it has (class folders, or split folders)."""
    cfg, layout = apply_layout(cfg)
    index = scan(cfg.data, cache_dir=cache_dir)
    out = {"layout": layout.kind, "layout_description": layout.describe(), "test_dir": layout.test_dir,
           **report(index, min_side)}
    test_dir = cfg.data.test_dir or layout.test_dir
    if test_dir:  # the test split is checked too: a corrupt file there would only show up at the run's end
        out["test"] = _test_split(test_dir, index.classes, cfg.data.image_size)
        out["errors"] += out["test"]["errors"]
    return out


def _test_split(folder: str, classes: list[str], image_size: int) -> dict:
    """The test folder's usable images, unreadable files and classes the training data lacks."""
    root, per_class, skipped = scan_labelled(folder, image_size)
    unknown = sorted(c for c, files in per_class.items() if files and c not in classes)
    errors = [f"{len(skipped)} unreadable file(s) in the test folder {str(root)!r}"] if skipped else []
    if unknown:
        errors.append(f"test class folder(s) {unknown} are not training classes")
    return {"dir": str(root), "images": sum(len(f) for f in per_class.values()), "skipped": skipped,
            "unknown_classes": unknown, "errors": errors}


def report(index: DatasetIndex, min_side: int) -> dict:
    counts = index.counts()
    totals = {c: v[TRAIN] + v[VAL] for c, v in counts.items()}
    imbalance = max(totals.values()) / max(1, min(totals.values()))
    dup = index.duplicates
    groups = dup.get("groups") or []
    cross_class = [sorted(g["files"]) for g in groups if g["conflict"]]
    cross_split = [sorted(g["files"]) for g in groups if not g["conflict"] and len(set(g["splits"])) > 1]
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
        how = "all copies left out (data.duplicates=drop)" if dup.get("policy") == "drop" else \
            "trained as labelled (data.duplicates=keep)"
        errors.append(f"{dup['label_conflicts']} image(s) appear in more than one class (same picture): label "
                      f"conflicts, {how}")
    if cross_split:
        warnings.append(f"{dup['across_splits']} image(s) appear in both train and val (same picture): "
                        f"{len(dup['leaked'])} leaked validation image(s) left out of the accuracy that decides "
                        f"promotion")
    if imbalance > IMBALANCE_WARN:
        warnings.append(f"classes are imbalanced {imbalance:.1f}:1")
    if small:
        warnings.append(f"{len(small)} image(s) smaller than {min_side} px on a side")
    return {
        "train_dir": index.train_dir, "val_dir": index.val_dir, "classes": index.classes, "counts": counts,
        "images": len(index.files), "imbalance_ratio": round(imbalance, 2), "skipped": index.skipped,
        "excluded_classes": index.excluded_classes, "duplicates_across_classes": cross_class,
        "duplicates_across_splits": cross_split, "duplicate_groups": groups,
        "duplicates": {k: v for k, v in dup.items() if k != "groups"}, "small_images": small, "errors": errors, "warnings": warnings,
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
    test = r.get("test")
    if test:
        lines.append(f"test folder {test['dir']}: {test['images']} usable images")
        lines += [f"unreadable (test): {s['path']}: {s['reason']}" for s in test["skipped"]]
    for c in r["excluded_classes"]:
        lines.append(f"left out: class {c['class']!r}: {c['reason']}")
    for group in r["duplicates_across_classes"][:MAX_LISTED]:
        lines.append(f"same image in several classes: {', '.join(group)}")
    for group in r["duplicates_across_splits"][:MAX_LISTED]:
        lines.append(f"same image in train and val: {', '.join(group)}")
    dup = r.get("duplicates") or {}
    if dup.get("groups_total"):
        lines.append(f"duplicates: {dup['groups_total']} group(s) of the same picture ({dup['images_in_groups']} "
                     f"images): {dup['label_conflicts']} across classes, {dup['across_splits']} across train/val "
                     f"({len(dup['leaked'])} leaked validation images), {len(dup['dropped'])} dropped")
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
