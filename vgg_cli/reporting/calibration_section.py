"""report.html's calibration and "unknown" part of an evaluation (report.json "calibration" and "unknown", made by
``vgg_cli.evaluation.reliability``). Draws what it is handed."""

from __future__ import annotations

from pathlib import Path

from vgg_cli.reporting.html import esc, num, picture, table

METRICS = (("ece", "ECE (15 bins)"), ("mce", "MCE"), ("nll", "NLL"), ("brier", "Brier"))


def _metric_rows(cal: dict) -> list[list]:
    rows = [[label, num(cal["before"][k]), num(cal["after"][k])] for k, label in METRICS]
    cross = cal.get("cross_fit")
    if cross:
        for row, (k, _) in zip(rows, METRICS):
            row += [num(cross["before"][k]), num(cross["after"][k])]
    return rows


def calibration_section(report: dict) -> str:
    """The section's HTML ("" for an evaluation made before calibration existed)."""
    cal, unk, files = report.get("calibration"), report.get("unknown"), report.get("files") or {}
    if not cal:
        return ""
    head = ["", "before (temperature 1)", f"after (temperature {cal['temperature']:.4g})"]
    if cal.get("cross_fit"):
        head += ["cross-fit: before", "cross-fit: after (honest)"]
    note = ("The temperature was fitted on these images (the run's validation split), so \"after\" is in-sample; "
            "the cross-fit columns score each half with a temperature fitted on the other half: the honest figure."
            if cal.get("fitted_on_these_images") else
            "The temperature was not fitted on these images: \"after\" is the honest figure.")
    if cal.get("why"):
        note += f" Temperature: {cal['why']}."
    out = [f"<h2>Calibration</h2><p class=caption>{esc(note)}</p>", table(head, _metric_rows(cal), {1, 2, 3, 4}),
           "<div class=pair>" + picture(Path(files.get("reliability_png", "")), "reliability diagram") +
           picture(Path(files.get("coverage_png", "")), "coverage curve") + "</div>"]
    if unk:
        out.append(_unknown(unk))
    return "".join(out)


def _unknown(unk: dict) -> str:
    if unk.get("method"):
        how = (f"{unk['method']} score at most {unk['threshold']:.4g} (the threshold that accepts "
               f"{unk['acceptance_target']:.0%} of the run's validation split)")
    else:
        how = "no out-of-distribution statistics (a run from before them)"
    if unk.get("min_probability") is not None:
        how += f" and top probability at least {unk['min_probability']:g}"
    acc = unk.get("accuracy_accepted")
    text = (f"<h2>Accepted answers</h2><p>accepted <b>{unk['accepted']:.1%}</b> of {unk['images']} images ({esc(how)}); "
            f"accuracy of the accepted <b>{num(acc)}</b>, of all {num(unk['accuracy_all'])}. The others are "
            f"answered <i>unknown</i>.</p>")
    rows = [[r["class"], num(r["precision"], 3), num(r["recall"], 3), r["accepted"], r["support"]]
            for r in unk["per_class"]]
    return text + table(["class", "precision (accepted)", "recall (accepted and right)", "accepted", "support"],
                        rows, {1, 2, 3, 4})
