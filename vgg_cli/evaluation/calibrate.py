"""A finished run's calibration (``calibration:`` in the config): after the last epoch, before its evaluation.

1. ``model/best.keras`` predicts its validation split (the images promotion judges) once, keeping logits and,
   for the Mahalanobis score, the head's penultimate features;
2. temperature scaling is fitted there (``vgg_cli.evaluation.calibration.calibrate``: kept only when a cross-fit
   over halves of the split says it lowers the NLL of images it was not fitted on);
3. the out-of-distribution statistics: class means and shared covariance of the features of (up to
   ``MAX_FIT_IMAGES``) training images, and the threshold that accepts ``calibration.acceptance`` of the
   validation split's scores: ``model/best.ood.npz`` (``vgg_cli.inference.ood``);
4. the temperature is written into ``best.keras`` (and ``last.keras`` when it holds the same weights),
   atomically; a temperature of 1 rewrites nothing.

Every step can be redone: the logits do not depend on the temperature, so a run finished again after a kill fits
the same values. The record goes into summary.json's "calibration".
"""

from __future__ import annotations

import logging

import numpy as np

from vgg_cli.errors import DataError, NoInputError
from vgg_cli.runs.rundir import RunDir, ood_stats_path

log = logging.getLogger("vgg")
MAX_FIT_IMAGES = 1000  # training images whose features fit the Mahalanobis statistics (evenly over classes)


def _matrix(results, key: str) -> np.ndarray:
    return np.stack([getattr(r, key) for r in results]).astype(np.float64)


def _train_sample(index, limit: int = MAX_FIT_IMAGES) -> tuple[list[str], list[int]]:
    from vgg_cli.data.scan import TRAIN

    files, labels = index.split(TRAIN)
    per = max(1, limit // max(1, len(index.classes)))
    chosen: list[int] = []
    for c in range(len(index.classes)):
        idx = [i for i, y in enumerate(labels) if y == c]
        step = max(1, len(idx) / per)
        chosen += [idx[int(j * step)] for j in range(min(per, len(idx)))]
    chosen.sort()
    return [files[i] for i in chosen], [labels[i] for i in chosen]


def fit_ood(method: str, acceptance: float, model, batch_size: int, index, val_logits, val_features) -> tuple:
    """(OODStats, record) for ``method``, the threshold set on the validation scores."""
    from vgg_cli.inference.ood import OODStats, fit_gaussian, threshold_for, weights_digest
    from vgg_cli.inference.predict import Options, predict_files

    means = whiten = None
    record: dict = {"method": method}
    if method == "mahalanobis":
        files, labels = _train_sample(index)
        got = predict_files(model, files, 1, batch_size, options=Options(keep=("features",)))
        ok = [(r, y) for r, y in zip(got, labels) if r.error is None]
        if len(ok) < 2:
            raise DataError(f"only {len(ok)} training image(s) could be read to fit the out-of-distribution "
                            f"statistics")
        means, whiten = fit_gaussian(_matrix([r for r, _ in ok], "features"), np.asarray([y for _, y in ok]),
                                     len(index.classes))
        record.update(fit_images=len(ok), fit_split="train", features=int(means.shape[1]))
    stats = OODStats(method, 0.0, acceptance, weights_digest(model), means, whiten)
    scores = stats.score(val_logits, val_features)
    stats.threshold = threshold_for(scores, acceptance)
    record.update(threshold=stats.threshold, acceptance=acceptance, threshold_images=int(len(scores)),
                  accepted_validation=float(np.mean(scores <= stats.threshold)))
    return stats, record


def _method(requested: str, model) -> str:
    from vgg_cli.inference.ood import MAX_FEATURES
    from vgg_cli.model.build import head_tensors

    width = int(head_tensors(model)[0].shape[-1])
    if requested == "mahalanobis" and width > MAX_FEATURES:
        log.info("the head's features are %d wide (over %d): the out-of-distribution score is energy instead of "
                 "mahalanobis", width, MAX_FEATURES)
        return "energy"
    return requested


def calibrate_run(cfg, paths: RunDir, index) -> dict:
    """Steps 1-4 above; returns summary.json's "calibration" record (``{"fitted": False, ...}`` with the reason
    when there is nothing to fit on)."""
    from vgg_cli.evaluation.evaluate import validation_set
    from vgg_cli.inference.predict import Options, predict_files
    from vgg_cli.model.load import load_model, set_temperature, temperature_of

    settings = cfg.calibration
    try:
        data = validation_set(paths.root)
    except NoInputError as e:
        return {"temperature": 1.0, "fitted": False, "reason": f"no validation images ({e})", "ood": None}
    model = load_model(paths.best)
    stored = temperature_of(model)  # a run finished again after a kill may have written one already
    set_temperature(model, 1.0)
    method = _method(settings.ood, model) if settings.ood != "off" else None
    keep = ("logits", "features") if method == "mahalanobis" else ("logits",)
    results = predict_files(model, data.files, 1, cfg.train.batch_size, options=Options(keep=keep))
    classes = index.classes
    ok = [(r, classes.index(t)) for r, t in zip(results, data.truth) if r.error is None]
    if not ok:
        return {"temperature": 1.0, "fitted": False, "reason": "no readable validation image", "ood": None}
    logits, truth = _matrix([r for r, _ in ok], "logits"), np.asarray([t for _, t in ok])
    features = _matrix([r for r, _ in ok], "features") if method == "mahalanobis" else None
    from vgg_cli.evaluation.calibration import calibrate

    record = calibrate(logits, truth) if settings.temperature else {
        "temperature": 1.0, "fitted": False, "reason": "calibration.temperature is false"}
    if record["temperature"] != 1.0 and not set_temperature(model, record["temperature"]):
        record.update(temperature=1.0, reason="the model has no temperature layer (saved by an older vgg): left "
                      "uncalibrated")
    set_temperature(model, 1.0)
    record["ood"] = None
    if method is not None:
        stats, record["ood"] = fit_ood(method, settings.acceptance, model, cfg.train.batch_size, index, logits,
                                       features)
        stats.save(ood_stats_path(paths.best))
    _store_temperature(model, paths, record["temperature"], stored)
    log.info("calibration: temperature %.4g (%s)%s", record["temperature"], record["reason"],
             "" if not record["ood"] else f"; out-of-distribution score {record['ood']['method']}, threshold "
             f"{record['ood']['threshold']:.4g} (accepts {settings.acceptance:.0%} of the validation split)")
    return record


def _store_temperature(model, paths: RunDir, temperature: float, stored: float) -> None:
    """The temperature into best.keras, and into last.keras when it holds the same head weights; ``stored`` is the
    one best.keras held when it was loaded (1 unless a finish interrupted after this step is redone)."""
    import functools

    from vgg_cli.fsio import write_with
    from vgg_cli.inference.ood import weights_digest
    from vgg_cli.model.load import load_model, set_temperature
    from vgg_cli.training.checkpoints import save_model

    if temperature == 1.0 and stored == 1.0:
        return
    targets = [paths.best]
    if paths.last.is_file() and weights_digest(load_model(paths.last)) == weights_digest(model):
        targets.append(paths.last)
    set_temperature(model, temperature)
    for target in targets:
        write_with(target, functools.partial(save_model, model), suffix=".keras")
