"""report.html: one self-contained page about a run or an evaluation, for a person.

Everything is inside the file: pictures as data: URIs, no script or style from the network, so it opens from a
file:// URL on a machine with no internet, and can be mailed or attached to a ticket as one file. First the
headline: badges (training health coloured: green ok, amber stalled, red diverged; the promotion) and the numbers
big (accuracy, top-5, images, classes, image size, frozen blocks, learning rate, device, time, data), each tile
readable back from its ``data-key``/``data-value``. Then the run (the promotion decision and why), its curves, the
evaluation (the per-class table, the confusion matrices, the galleries with one row per class, a Grad-CAM colour
legend when the tiles are overlays) and every file that was skipped.

A small inline script counts the pictures the browser decoded (``data-images-decoded`` on <body>) and puts a
visible warning on the page when one did not, so a broken report never looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vgg_cli.config.yamltext import yaml_load
from vgg_cli.errors import VggError
from vgg_cli.fsio import write_text
from vgg_cli.reporting.calibration_section import calibration_section
from vgg_cli.reporting.data_quality import duplicates_section, label_issues_section
from vgg_cli.reporting.drift_section import drift_section
from vgg_cli.reporting.html import Raw, esc, page, picture, table
from vgg_cli.reporting.html import num as _num
from vgg_cli.runs.rundir import EvaluationDir
from vgg_cli.runs.summary import Summary

HEALTH_COLOURS = {"ok": "green", "stalled": "amber", "recovered": "amber", "diverged": "red"}


def health_badge(health: dict) -> str:
    """summary.json "health" as a coloured badge: green ok, amber stalled (and recovered with a warning to
    heed), red diverged, grey when unknown. ``data-health`` carries the status for scripts."""
    status = health.get("status")
    if not status:
        return '<span class="badge grey health" data-health="">health: not recorded</span>'
    colour = HEALTH_COLOURS.get(status, "grey")
    if status == "recovered" and not health.get("warning"):
        colour = "green"
    return (f'<span class="badge {colour} health health-{esc(status)}" data-health="{esc(status)}" '
            f'title="{esc(health.get("warning") or "")}">health: {esc(status)}</span>')


def promotion_badge(promotion: dict | None) -> str:
    colour, text = (("grey", "promotion not decided") if not promotion or promotion.get("pending") else
                    ("green", "promoted to production") if promotion.get("promoted") else ("grey", "not promoted"))
    return f'<span class="badge {colour} promotion">{text}</span>'


def run_config(run) -> dict:
    """The run's config.yaml as a tree ({} when it is missing or unreadable: the headline then shows "-")."""

    try:
        tree = yaml_load(run.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def tile(key: str, label: str, value, sub: str = "", kind: str = "", raw=None) -> str:
    """One headline figure; ``data-key``/``data-value`` (``raw``, else the value) let scripts read it back."""
    raw = value if raw is None else raw
    return (f'<div class="tile {kind}" data-key="{esc(key)}" data-value="{esc(raw)}"><div class=k>{esc(label)}</div>'
            f'<div class=v>{esc(value)}</div><div class=s>{esc(sub)}</div></div>')


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _blocks(blocks) -> str:
    """[1, 2, 3, 4, 5] -> "1-5"; [1, 3] -> "1, 3"; [] -> "none"."""
    blocks = sorted(b for b in (blocks if isinstance(blocks, list) else []) if isinstance(b, int))
    if not blocks:
        return "none"
    if blocks == list(range(blocks[0], blocks[-1] + 1)) and len(blocks) > 2:
        return f"{blocks[0]}\u2013{blocks[-1]}"
    return ", ".join(map(str, blocks))


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def accuracy_tiles(summary: Summary, evaluation: dict | None) -> list[str]:
    """Accuracy and top-5 accuracy: of the evaluation when there is one, else of the best epoch's validation."""
    if evaluation is not None:
        acc, n = evaluation.get("accuracy"), evaluation.get("images", 0)
        sub = f"{n - evaluation.get('misclassified', 0)} of {n} correct, {evaluation.get('data', '')}"
        top5 = evaluation.get("top5_accuracy")
    else:
        best = summary.best or {}
        acc, top5 = best.get("val_accuracy"), best.get("val_top5_accuracy")
        sub = (f"val_accuracy of the best epoch ({best.get('epoch')}); no evaluation" if acc is not None else
               "no validation images")
    classes = len(summary.classes or (evaluation or {}).get("classes") or [])
    top5_sub = "of the same images" if top5 is not None else (
        "needs more than 5 classes" if 0 < classes <= 5 else "not measured")
    return [tile("accuracy", "accuracy", _pct(acc), sub, "main", "" if acc is None else acc),
            tile("top5_accuracy", "top-5 accuracy", _pct(top5) if top5 is not None else "\u2014", top5_sub,
                 raw="" if top5 is None else top5)]


def _section(tree: dict, name: str) -> dict:
    return tree.get(name) if isinstance(tree.get(name), dict) else {}


def setup_tiles(summary: Summary, config: dict, evaluation: dict | None) -> list[str]:
    """What the model was trained on and with: images, classes, image size, frozen blocks, learning rate."""
    data, model = _section(config, "data"), _section(config, "model")
    images, classes = summary.images, summary.classes or list((evaluation or {}).get("classes") or [])
    out = []
    if images:
        skipped = f", {images['skipped']} skipped" if images.get("skipped") else ""
        out.append(tile("images", "images", f"{images.get('train', 0)} / {images.get('val', 0)}",
                        f"train / validation{skipped}", raw=f"{images.get('train', 0)}/{images.get('val', 0)}"))
    elif evaluation is not None:
        out.append(tile("images", "images", evaluation.get("images", "-"), "evaluated"))
    out.append(tile("classes", "classes", len(classes), ", ".join(classes)[:120]))
    size = data.get("image_size", (evaluation or {}).get("image_size"))
    out.append(tile("image_size", "image size", f"{size} px" if size else "-",
                    f"{size}\u00d7{size} input" if size else "", raw=size if size else ""))
    phases = [p for p in (summary.phases or []) if isinstance(p, dict)]
    if isinstance(model.get("freeze_blocks"), list):
        frozen = model["freeze_blocks"]
        sub = "; ".join(f"then {_blocks(p['frozen_blocks'])} when fine-tuning" for p in phases[1:]
                        if "frozen_blocks" in p) or f"of {str(model.get('arch', 'vgg16')).upper()}'s 5 conv blocks"
        out.append(tile("freeze_blocks", "frozen blocks", _blocks(frozen), sub, raw=",".join(map(str, frozen))))
    rates = [p for p in phases if isinstance(p.get("learning_rate"), (int, float))]
    if rates:
        shown = [f"{p['learning_rate']:g}{' (auto)' if p.get('learning_rate_auto') else ''}" for p in rates]
        out.append(tile("learning_rate", "learning rate", shown[0], "; ".join(
            f"phase {p.get('phase', i + 2)}: {r}" for i, (p, r) in enumerate(zip(rates[1:], shown[1:]))) or
            _optimizer(config), raw=rates[0]["learning_rate"]))
    return out


def _optimizer(config: dict) -> str:
    train = _section(config, "train")
    return f"{_section(train, 'optimizer').get('name', '-')}, {_section(train, 'schedule').get('name', '-')} schedule"


def where_tiles(summary: Summary, config: dict, evaluation: dict | None) -> list[str]:
    """Where it ran and for how long, and the data it read."""
    data, out = _section(config, "data"), []
    device, timings = summary.device or {}, summary.timings
    if device:
        out.append(tile("device", "device", f"{device.get('backend', '-')} \u00b7 {device.get('precision', '-')}",
                        device.get("note", "")))
    if timings:
        sub = (f"{_duration(timings.get('epochs_s'))} of epochs, {timings.get('images_per_sec', '-')} img/s"
               + (" (this session)" if summary.resumed else ""))
        out.append(tile("time", "time", _duration(timings.get("this_session_total_s")), sub,
                        raw=timings.get("this_session_total_s", "")))
    if data.get("train_dir"):
        val = (f"validation: {data['val_dir']}" if data.get("val_dir") else
               f"validation: {data.get('val_split', 0):.0%} of it, held out" if data.get("val_split") else "")
        out.append(tile("data", "training data", data["train_dir"], val, "wide"))
    return out


def headline(run, summary: Summary, evaluation: dict | None) -> str:
    """The first thing on the page: the badges, then the numbers a person asks for first, big."""
    config = run_config(run) if run is not None else {}
    status = summary.status.value if summary.status else "unfinished"
    badges = [health_badge(summary.health), f'<span class="badge grey status">{esc(status)}</span>',
              promotion_badge(summary.promotion)] if not summary.empty else []
    tiles = accuracy_tiles(summary, evaluation) + setup_tiles(summary, config, evaluation) + \
        where_tiles(summary, config, evaluation)
    out = (f"<div class=badges>{''.join(badges)}</div>" if badges else "") + \
        f"<div class=headline>{''.join(tiles)}</div>"
    warning = summary.health.get("warning")
    if warning:
        colour = HEALTH_COLOURS.get(summary.health_status or "", "amber")
        out += f'<div class="callout {colour} health-warning"><b>Training health:</b> {esc(warning)}</div>'
    return out


def run_section(run, summary: Summary) -> str:
    """The run in detail: what it trained on, with what, where, how long, and what became of it."""
    images, best, device = summary.images, summary.best or {}, summary.device or {}
    rows = [["run", run.name], ["status", summary.status.value if summary.status else "unfinished"],
            ["started", f"{summary.started}, finished {summary.finished or '-'}"],
            ["images", f"{images.get('train', 0)} train, {images.get('val', 0)} validation, "
                       f"{images.get('skipped', 0)} skipped"], ["weights", summary.weights],
            ["best epoch", f"{best.get('epoch', '-')} of {summary.epochs_run if summary.epochs_run is not None else '-'}: {summary.monitor or ''} "
                           f"{_num(summary.best_value)}" if best else "-"],
            ["device", f"{device.get('backend', '-')}, {device.get('precision', '-')}, "
                       f"{device.get('note', '')}; {device.get('distribute_note', '')}"]]
    stalled = summary.health.get("stalled_epochs") or []
    rows.append(["health", Raw(health_badge(summary.health) + (
        f" epochs {esc(', '.join(map(str, stalled)))} stalled; see the warning above"
        if stalled and summary.health.get("warning") else ""))])
    out = [f"<h2>Run</h2>{table(None, rows)}", promotion_section(summary.promotion)]
    config = run.config.read_text(encoding="utf-8") if run.config.is_file() else ""
    out.append(f"<details><summary>config.yaml</summary><pre>{esc(config)}</pre></details>")
    out.append(f"<h2>Training curves</h2>{picture(run.curves, 'training curves')}")
    return "".join(out)


def promotion_section(promotion: dict | None) -> str:
    if not promotion or promotion.get("pending"):
        return "<p class=muted>promotion: not decided</p>"
    numbers = [f"new model {_num(promotion.get('new_accuracy'))}"]
    if "production_accuracy" in promotion:
        numbers.append(f"production {promotion.get('production_run')} {_num(promotion['production_accuracy'])}")
    return (f"<p><b>Promotion:</b> {promotion_badge(promotion)} {esc(promotion.get('reason', ''))} "
            f"<span class=muted>({esc(', '.join(numbers))})</span></p>")


def evaluation_section(report: dict) -> str:
    """An evaluation report (``vgg_cli.evaluation.evaluate``): scores, per-class table, confusion matrices, galleries."""
    files = report.get("files") or {}
    head = (f"<h2>Evaluation on the {esc(report['data'])}</h2><p>accuracy <b>{_num(report['accuracy'])}</b> "
            f"({report['images'] - report['misclassified']} of {report['images']} correct)")
    if "top5_accuracy" in report:
        head += f", top-5 accuracy {_num(report['top5_accuracy'])}"
    head += "</p>"
    rows = [[r["class"], _num(r["precision"], 3), _num(r["recall"], 3), _num(r["f1"], 3), r["support"],
             r["predicted"]] for r in report["per_class"]]
    for name in ("macro", "weighted"):
        if report.get(name):
            avg = report[name]
            rows.append([f"{name} avg", _num(avg["precision"], 3), _num(avg["recall"], 3), _num(avg["f1"], 3),
                         report["images"], ""])
    out = [head, table(["class", "precision", "recall", "f1", "support", "predicted"], rows, {1, 2, 3, 4, 5})]
    if report.get("missing_classes"):
        out.append(f"<p class=muted>no images of {esc(', '.join(report['missing_classes']))} in this data</p>")
    out.append("<div class=pair>" + picture(Path(files.get("confusion_png", "")), "confusion matrix") +
               picture(Path(files.get("confusion_normalised_png", "")), "confusion matrix, normalised") + "</div>")
    out.append(calibration_section(report))
    out.append(gallery_section(files))
    return "".join(out)


CAM_LEGEND = ('<p class="caption cam-legend"><b>Grad-CAM:</b> each tile is coloured by where the evidence for the '
              '<i>predicted</i> class lies: <span class=cam-scale></span> blue = little or none, red = where it is '
              'strongest (each image scaled to its own strongest point). Red on the object is a good sign; red on '
              'the background means the model looks at the wrong thing.</p>')


def gallery_layout(files: dict) -> dict:
    """gallery.json (``vgg_cli.evaluation.gallery``): which class is on which row; {} for older evaluations."""
    try:
        layout = json.loads(Path(files["gallery_json"]).read_text(encoding="utf-8"))
    except (KeyError, OSError, ValueError):
        return {}
    return layout if isinstance(layout, dict) else {}


def gallery_section(files: dict) -> str:
    """The two galleries, each with a caption saying how to read it (and the Grad-CAM colours when used)."""
    layout = gallery_layout(files)
    legend = CAM_LEGEND if layout.get("gradcam") else ""
    wrong = (layout.get("misclassified_png") or {}).get("rows") or []
    right = (layout.get("correct_png") or {}).get("rows") or []
    wrong_caption = (f"One row per true class ({len(wrong)} with mistakes shown), the class of the most confident "
                     f"mistake first and the most confident first in each row; each tile says what the model "
                     f"predicted and how sure it was." if wrong else "No image was misclassified." if layout else
                     "The most confident mistakes first.")
    right_caption = ("One row per class, labelled on the left: a sample of its correctly classified images with "
                     "the probability given to it." if layout else "A sample per class.")
    empty = [r.get("class") for r in right if isinstance(r, dict) and not r.get("tiles")]
    if empty:
        right_caption += f" No image of {', '.join(map(str, empty))} was classified correctly."
    return (f"<h2>Misclassified images</h2><p class=caption>{esc(wrong_caption)}</p>{legend}" +
            picture(Path(files.get("misclassified_png", "")), "misclassified images") +
            f"<h2>Correct images, one row per class</h2><p class=caption>{esc(right_caption)}</p>{legend}" +
            picture(Path(files.get("correct_png", "")), "correct images"))


def skipped_section(skipped: list[dict]) -> str:
    if not skipped:
        return "<h2>Skipped files</h2><p class=muted>none</p>"
    return (f"<h2>Skipped files ({len(skipped)})</h2>" +
            table(["file", "reason"], [[s.get("path"), s.get("reason")] for s in skipped]))


def write_run_report(run, evaluation: dict | None = None, more: tuple = ()) -> Path:
    """``<run>/report.html``: the run, its curves, its validation evaluation (when there is one) and ``more``
    (the test folder's), skipped files."""
    summary = run.summary_or_none() or Summary()
    manifest = _manifest(run)
    sections = [headline(run, summary, evaluation), run_section(run, summary),
                drift_section(summary.drift, _section(run_config(run), "promote").get("on_drift"))]
    sections += [evaluation_section(e) for e in (evaluation, *more) if e is not None]
    sections += [duplicates_section(manifest), label_issues_section(run.label_issues, run.label_issues_png)]
    sections.append(skipped_section(list(manifest.get("skipped") or []) +
                                    list((evaluation or {}).get("skipped") or [])))
    out = run.report
    write_text(out, page(f"vgg run {run.name}", sections))
    return out


def write_evaluation_report(report: dict, out_dir: Path, run=None) -> Path:
    """``<evaluation folder>/report.html``: the evaluation, with its run's summary when it has one."""
    summary = (run.summary_or_none() if run is not None and run.summary.is_file() else None) or Summary()
    sections = [headline(run, summary, report)]
    if run is not None and run.summary.is_file():
        sections.append(run_section(run, summary))
    sections += [evaluation_section(report), skipped_section(report.get("skipped") or [])]
    out = EvaluationDir(Path(out_dir)).report_html
    write_text(out, page(f"vgg evaluation: {Path(report['model']).name} on the {report['data']}", sections))
    return out


def _manifest(run) -> dict:
    try:
        return run.read_manifest()
    except VggError:  # a damaged manifest only leaves the skipped list empty here
        return {}
