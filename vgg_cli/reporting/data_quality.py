"""report.html's data-quality sections: duplicates and leakage (data.json "duplicates", made by the scan,
``vgg_cli.data.leakage``) and suspected label errors (label_issues.csv and its gallery, made by
``vgg_cli.evaluation.suspects``). Draws what the run folder holds; a run from before these checks says so."""

from __future__ import annotations

import csv
from pathlib import Path

from vgg_cli.reporting.html import esc, picture, table

MAX_ROWS = 30  # groups and suspects listed in the page (all are in data.json / label_issues.csv)


def duplicates_section(manifest: dict) -> str:
    """Counts, then the label conflicts and the groups across the split. ``data-*`` attributes carry the counts."""
    dup = manifest.get("duplicates")
    if not isinstance(dup, dict) or "groups_total" not in dup:
        return "<section class=duplicates><h2>Duplicates</h2><p class=muted>not recorded (a run from before the " \
               "duplicate check)</p></section>"
    leaked, dropped = len(dup.get("leaked") or []), len(dup.get("dropped") or [])
    attrs = (f'data-groups="{dup["groups_total"]}" data-conflicts="{dup["label_conflicts"]}" '
             f'data-leaked="{leaked}" data-dropped="{dropped}"')
    how = ("every copy left out of training and validation (data.duplicates=drop)" if dup.get("policy") == "drop"
           else "trained as labelled (data.duplicates=keep)")
    text = (f"{dup['groups_total']} group(s) of the same picture (exact or near copies), {dup['images_in_groups']} "
            f"images; {dup['label_conflicts']} label conflict(s) across classes, {how}; {dup['across_splits']} "
            f"group(s) across train and validation: {leaked} leaked validation image(s), left out of the accuracy "
            f"that decides promotion.")
    rows = [[", ".join(g.get("classes") or []), ", ".join(sorted(set(g.get("splits") or []))), g.get("kind"),
             "; ".join(g.get("files") or [])] for g in dup.get("groups") or []
            if g.get("conflict") or len(set(g.get("splits") or [])) > 1][:MAX_ROWS]
    listed = table(["classes", "splits", "kind", "files"], rows) if rows else ""
    return f"<section class=duplicates {attrs}><h2>Duplicates</h2><p>{esc(text)}</p>{listed}</section>"


def label_issues_section(csv_path: Path, png_path: Path) -> str:
    """The ranked suspects (the first MAX_ROWS) and their gallery; ``data-suspects`` carries their count."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return "<section class=label-issues><h2>Suspected label errors</h2><p class=muted>not examined (no " \
               "label_issues.csv)</p></section>"
    head = f"<section class=label-issues data-suspects={len(rows)}><h2>Suspected label errors ({len(rows)})</h2>"
    if not rows:
        return head + "<p class=muted>none: every image's label agrees with the out-of-sample predictions</p>" \
                      "</section>"
    body = [[r["rank"], r["path"], r["split"], r["given_class"], r["suggested_class"],
             f"{float(r['given_class_probability']):.3f}", r["probabilities_from"]] for r in rows[:MAX_ROWS]]
    caption = ("Images whose label the out-of-sample predictions disagree with (confident learning), most suspect "
               "first: look at them, and move any that are in the wrong folder. All are in label_issues.csv.")
    return (head + f"<p class=caption>{esc(caption)}</p>" + picture(png_path, "suspected label errors") +
            table(["rank", "file", "split", "labelled", "looks like", "p(label)", "from"], body, {0, 5}) +
            "</section>")
