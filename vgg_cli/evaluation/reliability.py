"""The calibration and "unknown" parts of an evaluation report (``vgg evaluate``, report.html).

From the logits each prediction kept (``Options.keep``): ECE, MCE, NLL and Brier before (temperature 1) and after
(the model's temperature), the reliability diagram; the share of the images the run's out-of-distribution
threshold (and ``--min-probability``) accepts, per-class precision and recall of the accepted answers (an
``unknown`` answer counts as no answer: it lowers recall, not precision), and the coverage curve: the accuracy of
the accepted predictions against the share accepted, accepting the most confident first.
"""

from __future__ import annotations

import numpy as np

from vgg_cli.reporting.plots import coverage_plot, reliability_diagram


def coverage_curve(confidence: np.ndarray, correct: np.ndarray, points: int = 50) -> list[dict]:
    """Accept the most confident first: (share accepted, accuracy of the accepted) at ``points`` shares."""
    order = np.argsort(-np.asarray(confidence, np.float64), kind="stable")
    hits = np.cumsum(np.asarray(correct, np.float64)[order])
    n = len(order)
    out = []
    for k in sorted({max(1, round(n * i / points)) for i in range(1, points + 1)}):
        out.append({"coverage": k / n, "accuracy": float(hits[k - 1] / k)})
    return out


def calibration_block(result, temperature: float, own_split: dict | None) -> dict:
    """report.json's "calibration". ``own_split``: summary.json's record when these are the images the
    temperature was fitted on (the run's validation split): then "after" is in-sample and the honest figure is
    the record's cross-fit."""
    z = np.stack([r.logits for r, _ in result.scored]).astype(np.float64)
    y = np.asarray(result.truth)
    task = result.task
    before, after = task.probabilities(z), task.probabilities(z, temperature)
    out = {"temperature": temperature, "before": task.calibration_metrics(before, y),
           "after": task.calibration_metrics(after, y), "fitted_on_these_images": own_split is not None,
           "reliability": {"before": task.reliability(before, y), "after": task.reliability(after, y)}}
    if own_split is not None:
        out["cross_fit"] = own_split.get("cross_fit")
        out["why"] = own_split.get("reason")
    return out


def unknown_block(result, ood, min_probability: float | None) -> dict:
    """report.json's "unknown": what was accepted, per-class precision/recall of the accepted, the coverage."""
    classes, truth = result.classes, np.asarray(result.truth)
    predicted = np.asarray([r[0] for r in result.ranked])
    accepted = np.asarray([not r.unknown for r, _ in result.scored])
    correct = predicted == truth
    confidence = np.asarray([r.top[0][1] for r, _ in result.scored])
    per_class = []
    for c, name in enumerate(classes):
        answered = accepted & (predicted == c)
        support = int(np.sum(truth == c))
        per_class.append({"class": name, "precision": float(np.mean(correct[answered])) if answered.any() else None,
                          "recall": float(np.sum(correct & answered) / support) if support else None,
                          "accepted": int(np.sum(accepted & (truth == c))), "support": support})
    out = {"method": getattr(ood, "method", None), "threshold": getattr(ood, "threshold", None),
           "acceptance_target": getattr(ood, "acceptance", None), "min_probability": min_probability,
           "images": int(len(truth)), "accepted": float(accepted.mean()),
           "accuracy_all": float(correct.mean()),
           "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else None,
           "per_class": per_class, "coverage": {"probability": coverage_curve(confidence, correct)}}
    scores = [r.ood_score for r, _ in result.scored]
    if ood is not None and all(s is not None for s in scores):
        out["coverage"]["ood_score"] = coverage_curve(-np.asarray(scores), correct)
    return out


def write_pictures(report: dict, files: dict) -> None:

    cal, unk = report.get("calibration"), report.get("unknown")
    if cal:
        reliability_diagram(cal["reliability"], cal["temperature"], files["reliability_png"])
    if unk:
        coverage_plot(unk["coverage"], unk["accepted"], unk["accuracy_accepted"], files["coverage_png"])


def text_lines(report: dict) -> list[str]:
    """The terminal lines of ``format_report`` for calibration and unknown."""
    lines = []
    cal = report.get("calibration")
    if cal:
        b, a = cal["before"], cal["after"]
        lines.append(f"calibration (temperature {cal['temperature']:.4g}): ECE {b['ece']:.4f} -> {a['ece']:.4f}, "
                     f"MCE {b['mce']:.4f} -> {a['mce']:.4f}, NLL {b['nll']:.4f} -> {a['nll']:.4f}, Brier "
                     f"{b['brier']:.4f} -> {a['brier']:.4f}")
        cross = cal.get("cross_fit")
        if cal["fitted_on_these_images"]:
            lines.append("  (the temperature was fitted on these images; images it did not see: the cross-fit over "
                         "halves" + (f", ECE {cross['before']['ece']:.4f} -> {cross['after']['ece']:.4f}, NLL "
                                     f"{cross['before']['nll']:.4f} -> {cross['after']['nll']:.4f})"
                                     if cross else ": not made)"))
    unk = report.get("unknown")
    if unk:
        how = (f"{unk['method']} score <= {unk['threshold']:.4g} (set to accept {unk['acceptance_target']:.0%} of "
               f"the validation split)" if unk["method"] else "no out-of-distribution statistics")
        if unk["min_probability"] is not None:
            how += f", probability >= {unk['min_probability']:g}"
        acc = unk["accuracy_accepted"]
        lines.append(f"accepted: {unk['accepted']:.1%} of {unk['images']} images ({how}); accuracy of the accepted "
                     f"{'-' if acc is None else f'{acc:.4f}'}, of all {unk['accuracy_all']:.4f}")
    return lines
