"""The end of a run, after its last epoch, as stages of its session: ``finish`` (latest, calibration, the
evaluations), ``decide`` (the promotion decision, ``vgg_cli.promotion.decide.judge``), ``apply`` (the report, the
production change, pruning). ``vgg_cli.job.lifecycle`` runs them in that order.

Part of the commit protocol (``vgg_cli.training.checkpoints`` commits the epochs): every step here can be redone, so a run
killed at any moment after its last epoch is finished by ``vgg train --resume`` or ``--if-changed``, and its
promotion is decided exactly once and carried out exactly once:

1. ``summary.json`` with status finished/early_stopped and ``promotion: {"pending": true}``;
2. ``latest`` points at the run (unless a newer run took it meanwhile);
3. calibration (``vgg_cli.evaluation.calibrate``: the temperature into ``best.keras``, the out-of-distribution
   statistics beside it, summary.json "calibration"); then with ``output.report``, the new model is evaluated on its validation split (``evaluation/val/``); the
   decision (no side effects; it reuses that evaluation's accuracy) is written into ``summary.json`` with
   ``applied: false``;
4. ``report.html`` (with ``output.report``);
5. production is moved when promoted, as one intent applied idempotently (``RunsRoot.set_production``: a kill in
   it is completed by the next command, never repeated), then ``applied: true``;
6. ``output.keep`` pruning (idempotent: the next finish prunes what a killed one did not).

A kill (or a full disk) anywhere before ``applied: true`` leaves a run that ``--resume`` and ``--if-changed``
finish: the report is part of finishing.

A diverged run stops before 2: it is never ``latest`` and never promoted.
"""

from __future__ import annotations

import logging

from vgg_cli.errors import DataError, NoInputError, VggError
from vgg_cli.evaluation.calibrate import calibrate_run
from vgg_cli.evaluation.evaluate import evaluate
from vgg_cli.evaluation.frozen import cached_validation
from vgg_cli.evaluation.scoring import answering, folder_set, validation_set
from vgg_cli.fsio import read_json
from vgg_cli.platform.device import peak_rss_mib
from vgg_cli.promotion.decide import judge
from vgg_cli.promotion.production import apply_decision, prune
from vgg_cli.reporting.report import write_run_report
from vgg_cli.runs.rundir import EvaluationDir, RunDir
from vgg_cli.runs.summary import Summary
from vgg_cli.task import SINGLE_LABEL, Task

log = logging.getLogger("vgg")


def finish(session, summary: Summary) -> dict | None:
    """Steps 2-3 above for a run whose summary.json (step 1) is written: ``latest``, and while its promotion is
    pending, calibration and the evaluations. Returns the validation evaluation's report (None when there is none,
    or when the promotion was decided before a kill: the decision is not made again)."""
    cfg, paths = session.cfg, session.paths
    session.runs.point_latest(paths)
    if not session.device.is_chief or not summary.undecided:
        return None  # a multi-worker job's other workers: the chief finishes
    summary.calibration, calibrated = calibrate(cfg, paths, session.index, session.runs, session.plan.task)
    paths.write_summary(summary)
    evaluation = evaluate_validation(cfg, paths, calibrated, session.runs) if cfg.output.report else None
    if cfg.data.test_dir is not None:
        evaluate_test(cfg, paths)
    return evaluation


def decide(session, summary: Summary, best: dict | None, evaluation: dict | None) -> None:
    """Step 3's decision, while the promotion is pending (no side effects beyond summary.json's ``applied:
    false``): ``vgg_cli.promotion.decide.judge``, reusing the validation evaluation's accuracy."""
    if not session.device.is_chief or not summary.undecided:
        return
    cfg = session.cfg
    summary.promotion = {**judge(cfg.promote, cfg.train.batch_size, session.paths, session.index, best, evaluation,
                                 summary.drift, session.runs), "applied": False}
    session.paths.write_summary(summary)


def apply(session, summary: Summary) -> Summary:
    """Steps 4-6: the report, the production change (once), ``applied: true``, pruning."""
    cfg, paths, promotion = session.cfg, session.paths, summary.promotion
    if not session.device.is_chief:
        return summary
    if promotion.get("applied") is False:
        if cfg.output.report:
            write_run_report(paths, _saved_evaluation(paths), (_saved_evaluation(paths, "test"),))
        apply_decision(session.runs, paths.root.name, promotion)
        promotion["applied"] = True
        summary.timings = {**summary.timings, "peak_rss_mib": peak_rss_mib()}
        paths.write_summary(summary)
    if cfg.output.keep is not None:
        prune(session.runs, cfg.output.keep, paths.root.name)
    return summary


def calibrate(cfg, paths: RunDir, index, runs=None, task: Task = SINGLE_LABEL) -> tuple[dict, object | None]:
    """Temperature and out-of-distribution statistics (``vgg_cli.evaluation.calibrate``) before the evaluation,
    so it and everything after answer calibrated; an unreadable validation split is said, not fatal. Returns
    (summary.json's "calibration", the calibrated best model when one was loaded, for the evaluation)."""

    if not cfg.calibration.temperature and cfg.calibration.ood == "off":
        return {"temperature": 1.0, "fitted": False, "reason": "calibration is off", "ood": None}, None
    try:
        return calibrate_run(cfg, paths, index, runs, task)
    except DataError as e:
        log.warning("the run is not calibrated (%s)", e)
        return {"temperature": 1.0, "fitted": False, "reason": str(e), "ood": None}, None


def evaluate_validation(cfg, paths: RunDir, calibrated=None, runs=None) -> dict | None:
    """``vgg evaluate`` of the new model on its validation split, into ``<run>/evaluation/val``: the report, or
    None when the run has no validation images. ``calibrated``: best.keras as calibration left it (``calibrate``),
    saving a load; used when the split is answered from the feature cache (it may be cut already)."""
    from vgg_cli.model.load import load_model

    try:
        data = validation_set(paths.root)
    except NoInputError:
        log.info("no validation images: the run is not evaluated (report.html shows its training only)")
        return None
    try:
        model = calibrated if calibrated is not None else load_model(paths.best)
        result = cached_validation(model, paths, data, cfg.train.batch_size, answering(model, paths.best), cfg, runs)
        if result is None and calibrated is not None:  # scored on the images: an uncut model
            model = load_model(paths.best)
        report = evaluate(model, paths.best, data, paths.evaluation("val"), cfg.train.batch_size, result=result,
                          runs=runs)
    except DataError as e:  # its validation images became unreadable since the scan
        log.warning("the validation split could not be evaluated (%s); promotion judges without it", e)
        return None
    log.info("evaluated on the validation split: accuracy %.4f (%d of %d correct); report %s", report["accuracy"],
             report["images"] - report["misclassified"], report["images"], paths.report)
    return report


def evaluate_test(cfg, paths: RunDir) -> dict | None:
    """The held-out test folder (``data.test_dir``, or a split layout's test/), into ``<run>/evaluation/test``:
    reported, never used for promotion."""
    from vgg_cli.model.load import class_names_of, image_size_of, load_model

    model = load_model(paths.best)
    try:
        data = folder_set(cfg.data.test_dir, class_names_of(model), image_size_of(model))
        report = evaluate(model, paths.best, data, paths.evaluation("test"), cfg.train.batch_size, run=paths)
    except (DataError, NoInputError) as e:
        log.warning("the test folder %s could not be evaluated (%s)", cfg.data.test_dir, e)
        return None
    log.info("evaluated on the test folder %s: accuracy %.4f (%d of %d correct; not used for promotion)",
             cfg.data.test_dir, report["accuracy"], report["images"] - report["misclassified"], report["images"])
    return report


def _saved_evaluation(paths: RunDir, name: str = "val") -> dict | None:
    """evaluation/<name>/report.json (a run finished again after a kill reuses it), or None."""
    try:
        return read_json(EvaluationDir(paths.evaluation(name)).report)
    except VggError:
        return None
