"""report.html: one self-contained page about a run or an evaluation, for a person.

Everything is inside the file: pictures as data: URIs, no script or style from the network, so it opens from a
file:// URL on a machine with no internet, and can be mailed or attached to a ticket as one file. Sections: the
run (data, config, device, timings, the promotion decision and why), its curves, the evaluation (accuracy, the
per-class table, the confusion matrices, the galleries) and every file that was skipped.

A small inline script counts the pictures the browser decoded (``data-images-decoded`` on <body>) and puts a
visible warning on the page when one did not, so a broken report never looks complete.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from vgg_cli.errors import VggError
from vgg_cli.fsio import write_text
from vgg_cli.runs.rundir import EvaluationDir
from vgg_cli.runs.summary import Summary

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #1f2328; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #d0d7de; padding: .25em .6em; }
th { background: #f6f8fa; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: .4em 0; }
.pair { display: flex; gap: 1em; flex-wrap: wrap; } .pair img { max-width: 48%; }
.ok { color: #1a7f37; font-weight: 600; } .bad { color: #cf222e; font-weight: 600; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; } .muted { color: #59636e; }
#broken { display: none; background: #ffebe9; border: 1px solid #cf222e; padding: .6em; }
"""

CHECK_IMAGES = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images-total", imgs.length);
  document.body.setAttribute("data-images-decoded", imgs.length - bad.length);
  if (bad.length) {
    var note = document.getElementById("broken");
    note.textContent = bad.length + " picture(s) of this report could not be shown: " +
      bad.map(function (i) { return i.alt; }).join(", ");
    note.style.display = "block";
    console.error(note.textContent);
  }
});
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def picture(path: Path, alt: str) -> str:
    """An <img> with the PNG inside it; a missing file is said in words."""
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError:
        return f'<p class="muted">({esc(alt)}: {esc(Path(path).name)} is missing)</p>'
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(head: list[str] | None, rows: list[list], numeric: set[int] = frozenset()) -> str:
    """A table; ``head`` None: a key/value table, keys as row headers."""
    if head is None:
        return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{esc(c)}</td>'
                                   for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _num(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def run_section(run, summary: Summary) -> str:
    """The run: what it trained on, with what, where, how long, and what became of it."""
    images = summary.images
    best = summary.best or {}
    monitor = summary.monitor or ""
    device = summary.get("device") or {}
    timings = summary.get("timings") or {}
    rows = [["run", run.name], ["status", summary.status.value if summary.status else "unfinished"],
            ["started", summary.started], ["finished", summary.get("finished")],
            ["classes", ", ".join(summary.classes)],
            ["images", f"{images.get('train', 0)} train, {images.get('val', 0)} validation, "
                       f"{images.get('skipped', 0)} skipped"],
            ["weights", summary.get("weights")],
            ["best epoch", f"{best.get('epoch', '-')} of {summary.get('epochs_run', '-')}: {monitor} "
                           f"{_num(summary.best_value)}" if best else "-"],
            ["device", f"{device.get('backend', '-')}, {device.get('precision', '-')}, "
                       f"{device.get('note', '')}; {device.get('distribute_note', '')}"],
            ["time", f"{timings.get('this_session_total_s', '-')} s in all, {timings.get('epochs_s', '-')} s of "
                     f"epochs, {timings.get('images_per_sec', '-')} img/s"]]
    health = summary.health.get("warning")
    if health:
        rows.append(["health", health])
    out = [f"<h2>Run</h2>{table(None, rows)}", promotion_section(summary.promotion)]
    config = run.config.read_text(encoding="utf-8") if run.config.is_file() else ""
    out.append(f"<details><summary>config.yaml</summary><pre>{esc(config)}</pre></details>")
    out.append(f"<h2>Training curves</h2>{picture(run.curves, 'training curves')}")
    return "".join(out)


def promotion_section(promotion: dict | None) -> str:
    if not promotion or promotion.get("pending"):
        return "<p class=muted>promotion: not decided</p>"
    verdict = ('<span class="ok">promoted to production</span>' if promotion.get("promoted") else
               '<span class="bad">not promoted</span>')
    numbers = [f"new model {_num(promotion.get('new_accuracy'))}"]
    if "production_accuracy" in promotion:
        numbers.append(f"production {promotion.get('production_run')} {_num(promotion['production_accuracy'])}")
    return (f"<p><b>Promotion:</b> {verdict}: {esc(promotion.get('reason', ''))} "
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
    out.append("<h2>Misclassified images</h2>" + picture(Path(files.get("misclassified_png", "")),
                                                          "misclassified images"))
    out.append("<h2>Correct images, a sample per class</h2>" + picture(Path(files.get("correct_png", "")),
                                                                       "correct images"))
    return "".join(out)


def skipped_section(skipped: list[dict]) -> str:
    if not skipped:
        return "<h2>Skipped files</h2><p class=muted>none</p>"
    return (f"<h2>Skipped files ({len(skipped)})</h2>" +
            table(["file", "reason"], [[s.get("path"), s.get("reason")] for s in skipped]))


def page(title: str, sections: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{CSS}</style>"
            f"<script>{CHECK_IMAGES}</script></head><body><h1>{esc(title)}</h1><div id=broken></div>"
            + "".join(sections) + "</body></html>\n")


def write_run_report(run, evaluation: dict | None = None) -> Path:
    """``<run>/report.html``: the run, its curves, its validation evaluation (when there is one), skipped files."""
    summary = run.summary_or_none() or Summary()
    manifest = _manifest(run)
    sections = [run_section(run, summary)]
    if evaluation is not None:
        sections.append(evaluation_section(evaluation))
    sections.append(skipped_section(list(manifest.get("skipped") or []) +
                                    list((evaluation or {}).get("skipped") or [])))
    out = run.report
    write_text(out, page(f"vgg run {run.name}", sections))
    return out


def write_evaluation_report(report: dict, out_dir: Path, run=None) -> Path:
    """``<evaluation folder>/report.html``: the evaluation, with its run's summary when it has one."""
    sections = []
    if run is not None and run.summary.is_file():
        sections.append(run_section(run, run.summary_or_none() or Summary()))
    sections += [evaluation_section(report), skipped_section(report.get("skipped") or [])]
    out = EvaluationDir(Path(out_dir)).report_html
    write_text(out, page(f"vgg evaluation: {Path(report['model']).name} on the {report['data']}", sections))
    return out


def _manifest(run) -> dict:
    try:
        return run.read_manifest()
    except VggError:  # a damaged manifest only leaves the skipped list empty here
        return {}
