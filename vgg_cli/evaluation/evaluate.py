"""`vgg evaluate`: how good a trained model is, on its run's validation split or on any labelled folder.

Reads the run directory (or a .keras file) back, predicts with ``predict.predict_files`` (the same decoding as
training and prediction, in the resize mode the model records; augmentation layers are inactive outside training),
and reports accuracy, top-5 accuracy (more than 5 classes), per-class precision/recall/F1/support and the confusion
matrix; writes them, the pictures and the misclassified files into an output folder. Folder classes are matched to
the model's by name: a class the model does not know is an error, a class the folder lacks is reported and scored as
absent, never shifted.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from vgg_cli.errors import VggError
from vgg_cli.evaluation import reliability
from vgg_cli.evaluation.gallery import galleries
from vgg_cli.evaluation.reliability import text_lines
from vgg_cli.evaluation.scoring import EvalSet, Scored, answering, score
from vgg_cli.evaluation.suspects import find_run_label_issues
from vgg_cli.fsio import write_json, write_text
from vgg_cli.reporting.plots import confusion_matrix
from vgg_cli.reporting.report import write_evaluation_report
from vgg_cli.runs.rundir import EvaluationDir, RunDir
from vgg_cli.task.single_label import TOP_K

log = logging.getLogger("vgg")


def evaluate(model, model_file: Path, data: EvalSet, out_dir: Path, batch_size: int = 32, gradcam: bool | str = False,
             run=None, result: Scored | None = None, tta: str = "none", options=None, runs=None) -> dict:
    """Predict with ``model`` (loaded from ``model_file``), score, and write report.json, per_class.csv,
    confusion_matrix.csv/.png, confusion_matrix_normalised.png, misclassified.csv, the galleries (misclassified.png,
    correct.png; Grad-CAM overlays with ``gradcam``) and report.html (with ``run``'s summary, a ``RunDir``) into
    ``out_dir``. ``result``: the scores when the caller has them already; ``options``: ``predict.Options``
    (default: calibrated, the run's out-of-distribution statistics); ``runs``: the runs folder, when the caller has
    it (the label-issue search reads its feature cache). Returns the report."""
    from vgg_cli.model.load import image_size_of, resize_of

    options = options or answering(model, model_file)
    result = result or score(model, data, batch_size, tta, options)
    classes, scored, truth, ranked, unreadable = (result.classes, result.scored, result.truth, result.ranked,
                                                  result.unreadable)
    s = dict(result.scores)

    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = s.pop("confusion")
    report = {"model": str(model_file), "data": data.source, "image_size": image_size_of(model),
              "resize": resize_of(model), "tta": tta, "outputs_from": result.outputs_from, **s,
              "classes": classes, "missing_classes": data.missing_classes,
              "skipped": data.skipped + unreadable, "misclassified": int(sum(r[0] != t for t, r in zip(truth, ranked))),
              "confusion_matrix": matrix.tolist(), "out_dir": str(out_dir)}
    for c, row in zip(classes, report["per_class"]):
        row["class"] = c
    report["per_class"] = [{"class": r.pop("class"), **r} for r in report["per_class"]]
    names = EvaluationDir(out_dir)
    files = {"report": names.report, **{k: v for k, v in names.files().items() if not k.endswith("_png") or
                                        k.startswith(("confusion", "reliability", "coverage"))}}
    report["files"] = {k: str(v) for k, v in files.items()}
    _calibration(report, model, result, options, data, files)
    write_text(files["per_class"], _csv([["class", "precision", "recall", "f1", "support", "predicted"]] +
                                        [[r["class"], _num(r["precision"]), _num(r["recall"]), _num(r["f1"]),
                                          r["support"], r["predicted"]] for r in report["per_class"]]))
    write_text(files["confusion_csv"], _csv([["true \\ predicted", *classes]] +
                                            [[c, *map(int, row)] for c, row in zip(classes, matrix)]))
    wrong = [(r, t) for (r, t), rk, ti in zip(scored, ranked, truth) if rk[0] != ti]
    k = min(TOP_K, len(classes))
    write_text(files["misclassified"], _csv(
        [["path", "true_class", "predicted_class", "predicted_probability", "true_class_probability", "top_k"]] +
        [[r.path, t, r.top[0][0], f"{r.top[0][1]:.6f}", f"{dict(r.top)[t]:.6f}",
          " ".join(f"{lab}:{p:.4f}" for lab, p in r.top[:k])] for r, t in wrong]))

    confusion_matrix(matrix, classes, files["confusion_png"], normalised=False)
    confusion_matrix(matrix, classes, files["confusion_normalised_png"], normalised=True)

    report["files"].update(galleries(model, result, out_dir, gradcam, batch_size))
    if data.run_dir is not None and Path(out_dir).resolve() == RunDir(data.run_dir).evaluation("val").resolve():
        report["label_issues"] = _label_issues(model, data.run_dir, result, batch_size, runs)
    report["files"]["report_html"] = str(names.report_html)
    write_json(files["report"], report)
    write_evaluation_report(report, out_dir, run)
    return report


def _calibration(report: dict, model, result: Scored, options, data: EvalSet, files: dict) -> None:
    """report["calibration"] and report["unknown"] (``vgg_cli.evaluation.reliability``) and their pictures."""
    from vgg_cli.model.load import temperature_of

    if any(r.logits is None for r, _ in result.scored):
        return
    own = None
    if data.run_dir is not None:
        summary = RunDir(data.run_dir).summary_or_none()
        own = (summary.calibration if summary else None) or {}
    report["calibrated"] = options.calibrated
    report["calibration"] = reliability.calibration_block(result, temperature_of(model), own)
    report["unknown"] = reliability.unknown_block(result, options.ood, options.min_probability)
    reliability.write_pictures(report, files)


def _label_issues(model, run_dir: Path, result: Scored, batch_size: int, runs=None) -> dict | None:
    """A run's own validation evaluation also ranks its suspected label errors (label_issues.csv in the run)."""

    try:
        found = find_run_label_issues(run_dir, model, result, batch_size, runs)
    except VggError as e:
        log.warning("suspected label errors not ranked: %s", e)
        return None
    return {"suspects": len(found["suspects"]), "examined": found["examined"], "how": found["how"],
            "csv": found["csv"]}


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def format_report(report: dict) -> str:
    """The report as a terminal table (like scikit-learn's classification_report)."""
    width = max(12, *(len(c) for c in report["classes"]))
    lines = [f"model:  {report['model']}", f"data:   {report['data']} ({report['images']} images)", ""]
    lines.append(f"{'class':<{width}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}")

    def cell(x, w):
        return f"{'-':>{w}}" if x is None else f"{x:>{w}.3f}"

    for r in report["per_class"]:
        lines.append(f"{r['class']:<{width}}  {cell(r['precision'], 9)}  {cell(r['recall'], 6)}  "
                     f"{cell(r['f1'], 6)}  {r['support']:>7}")
    lines.append("")
    for name in ("macro", "weighted"):
        avg = report[name]
        if avg:
            lines.append(f"{name + ' avg':<{width}}  {avg['precision']:>9.3f}  {avg['recall']:>6.3f}  "
                         f"{avg['f1']:>6.3f}  {report['images']:>7}")
    lines.append(f"{'accuracy':<{width}}  {report['accuracy']:>9.3f}  ({report['images'] - report['misclassified']}"
                 f" of {report['images']} correct)")
    if f"top{TOP_K}_accuracy" in report:
        lines.append(f"{f'top-{TOP_K} accuracy':<{width}}  {report[f'top{TOP_K}_accuracy']:>9.3f}")
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted):")
    lines += _matrix_lines(report["confusion_matrix"], report["classes"])
    if report["missing_classes"]:
        lines.append(f"note: no images of {report['missing_classes']} in this data; their recall and F1 are '-'")

    lines += text_lines(report)
    if report["skipped"]:
        lines.append(f"note: {len(report['skipped'])} unreadable file(s) skipped (listed in report.json)")
    lines.append(f"written to {report['out_dir']}: report.html, report.json, per_class.csv, "
                 f"confusion_matrix.csv/.png, confusion_matrix_normalised.png, misclassified.csv/.png, correct.png"
                 f"{', reliability.png, coverage.png' if report.get('calibration') else ''}")
    return "\n".join(lines) + "\n"


def _matrix_lines(matrix: list[list[int]], classes: list[str]) -> list[str]:
    if len(classes) > 20:
        return [f"  ({len(classes)} classes: see confusion_matrix.csv / .png)"]
    width = max(len(c) for c in classes)
    cols = [max(len(c), len(str(max(max(row) for row in matrix)))) for c in classes]
    out = ["  " + " " * width + "  " + "  ".join(f"{c:>{w}}" for c, w in zip(classes, cols))]
    for c, row in zip(classes, matrix):
        out.append(f"  {c:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(row, cols)))
    return out
