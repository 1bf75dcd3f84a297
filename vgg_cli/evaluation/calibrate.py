"""A finished run's calibration (``calibration:`` in the config): after the last epoch, before its evaluation.

1. ``model/best.keras`` predicts its validation split (the images promotion judges) once, keeping logits and,
   for the Mahalanobis score, the head's penultimate features: from the run's cached frozen-block features
   through the trainable rest when it had a frozen prefix (``vgg_cli.evaluation.frozen``), else on the images;
2. temperature scaling is fitted there (``vgg_cli.task.calibration.calibrate``: kept only when a cross-fit
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

import functools
import logging

import numpy as np

from vgg_cli.data.index import TRAIN
from vgg_cli.errors import DataError, NoInputError
from vgg_cli.evaluation.frozen import content_hashes, head_outputs, open_frozen
from vgg_cli.evaluation.scoring import validation_set
from vgg_cli.fsio import place_copy, write_with
from vgg_cli.inference.numpy_engine import Declined, load_numpy_model
from vgg_cli.inference.ood import MAX_FEATURES, OODStats, fit_gaussian, threshold_for, weights_digest
from vgg_cli.inference.predict import Options, predict_files
from vgg_cli.runs.rundir import RunDir, ood_stats_path
from vgg_cli.task import SINGLE_LABEL, Task

log = logging.getLogger("vgg")
MAX_FIT_IMAGES = 1000  # training images whose features fit the Mahalanobis statistics (evenly over classes)


def _matrix(results, key: str) -> np.ndarray:
    return np.stack([getattr(r, key) for r in results]).astype(np.float64)


def _train_sample(index, limit: int = MAX_FIT_IMAGES) -> tuple[list[str], list[int], list[str]]:
    """Up to ``limit`` training images, evenly over classes: (paths, labels, content hashes)."""

    entries = [e for e in index.files if e.split == TRAIN]
    per = max(1, limit // max(1, len(index.classes)))
    chosen: list[int] = []
    for c in range(len(index.classes)):
        idx = [i for i, e in enumerate(entries) if e.label == c]
        step = max(1, len(idx) / per)
        chosen += [idx[int(j * step)] for j in range(min(per, len(idx)))]
    chosen.sort()
    picked = [entries[i] for i in chosen]
    return [str(index.root_of(e) / e.path) for e in picked], [e.label for e in picked], [e.sha1 for e in picked]


def outputs(model, frozen, files: list[str], shas: list[str], batch_size: int,
            features: bool) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """(indices of the readable ``files``, their logits at temperature 1, the head's penultimate features or
    None): from the run's cached frozen features through the trainable rest when ``frozen`` is given, else the
    whole model on the decoded images (``model`` must then be uncut)."""
    if frozen is not None:
        rows, logits, feats, _ = head_outputs(frozen, files, shas, batch_size, features)
        return rows, logits, feats

    got = predict_files(model, files, 1, batch_size,
                        options=Options(keep=("logits", "features") if features else ("logits",)))
    ok = [i for i, r in enumerate(got) if r.error is None]
    if not ok:
        return [], np.zeros((0, 0)), None
    return ok, _matrix([got[i] for i in ok], "logits"), _matrix([got[i] for i in ok], "features") if features else None


def fit_ood(method: str, acceptance: float, model, batch_size: int, index, val_logits, val_features,
            frozen=None) -> tuple:
    """(OODStats, record) for ``method``, the threshold set on the validation scores; ``frozen``: the run's
    cached frozen features (``outputs``)."""

    means = whiten = None
    record: dict = {"method": method}
    if method == "mahalanobis":
        files, labels, shas = _train_sample(index)
        ok, _, feats = outputs(model, frozen, files, shas, batch_size, features=True)
        if len(ok) < 2:
            raise DataError(f"only {len(ok)} training image(s) could be read to fit the out-of-distribution "
                            f"statistics")
        means, whiten = fit_gaussian(feats, np.asarray([labels[i] for i in ok]), len(index.classes))
        record.update(fit_images=len(ok), fit_split="train", features=int(means.shape[1]))
    stats = OODStats(method, 0.0, acceptance, weights_digest(model), means, whiten)
    scores = stats.score(val_logits, val_features)
    stats.threshold = threshold_for(scores, acceptance)
    record.update(threshold=stats.threshold, acceptance=acceptance, threshold_images=int(len(scores)),
                  accepted_validation=float(np.mean(scores <= stats.threshold)))
    return stats, record


def _method(requested: str, model) -> str:
    from vgg_cli.model.build import head_tensors

    width = int(head_tensors(model)[0].shape[-1])
    if requested == "mahalanobis" and width > MAX_FEATURES:
        log.info("the head's features are %d wide (over %d): the out-of-distribution score is energy instead of "
                 "mahalanobis", width, MAX_FEATURES)
        return "energy"
    return requested


def calibrate_run(cfg, paths: RunDir, index, runs=None, task: Task = SINGLE_LABEL) -> tuple[dict, object | None]:
    """Steps 1-4 above: (summary.json's "calibration" record, ``{"fitted": False, ...}`` with the reason when there
    is nothing to fit on; the model as ``best.keras`` now holds it, or None when none was loaded). The model may
    have been cut after its frozen blocks (``vgg_cli.evaluation.frozen``): its whole graph is not for ``Forward``."""
    from vgg_cli.model.load import load_model, set_temperature, temperature_of

    settings = cfg.calibration
    try:
        data = validation_set(paths.root)
    except NoInputError as e:
        return {"temperature": 1.0, "fitted": False, "reason": f"no validation images ({e})", "ood": None}, None
    model = load_model(paths.best)
    stored = temperature_of(model)  # a run finished again after a kill may have written one already
    set_temperature(model, 1.0)
    method = _method(settings.ood, model) if settings.ood != "off" else None
    shas = content_hashes(index, data.files)
    frozen, source = _frozen(model, cfg, paths, runs) if None not in shas else (None, "the model on the images")
    ok, logits, features = outputs(model, frozen, data.files, shas, cfg.train.batch_size,
                                   features=method == "mahalanobis")
    if not ok:
        return {"temperature": 1.0, "fitted": False, "reason": "no readable validation image", "ood": None}, None
    truth = np.asarray([index.classes.index(data.truth[i]) for i in ok])

    record = task.calibrate(logits, truth) if settings.temperature else {
        "temperature": 1.0, "fitted": False, "reason": "calibration.temperature is false"}
    if record["temperature"] != 1.0 and not set_temperature(model, record["temperature"]):
        record.update(temperature=1.0, reason="the model has no temperature layer (saved by an older vgg): left "
                      "uncalibrated")
    set_temperature(model, 1.0)
    record["ood"] = None
    if method is not None:
        stats, record["ood"] = fit_ood(method, settings.acceptance, model, cfg.train.batch_size, index, logits,
                                       features, frozen)
        stats.save(ood_stats_path(paths.best))
    record["outputs_from"] = source
    _store_temperature(model, paths, record["temperature"], stored)
    set_temperature(model, record["temperature"])  # as best.keras holds it
    log.info("calibration: temperature %.4g (%s)%s", record["temperature"], record["reason"],
             "" if not record["ood"] else f"; out-of-distribution score {record['ood']['method']}, threshold "
             f"{record['ood']['threshold']:.4g} (accepts {settings.acceptance:.0%} of the validation split)")
    return record, model


def _frozen(model, cfg, paths: RunDir, runs=None):
    """(the run's frozen features, ``vgg_cli.evaluation.frozen``, or None; where calibration's outputs come from)."""

    try:
        frozen = open_frozen(model, cfg, paths, runs)
    except (ValueError, OSError) as e:  # a model vgg did not cut this way: the whole model answers
        log.debug("calibration: the frozen blocks cannot be cut off (%s); the whole model predicts", e)
        frozen = None
    if frozen is None:
        return None, "the model on the images"
    return frozen, f"the feature cache of frozen blocks 1-{frozen.blocks} and the trainable rest"


def _store_temperature(model, paths: RunDir, temperature: float, stored: float) -> None:
    """The temperature into best.keras, and into last.keras when it holds the same head weights; ``stored`` is the
    one best.keras held when it was loaded (1 unless a finish interrupted after this step is redone)."""

    from vgg_cli.model.load import set_temperature
    from vgg_cli.training.checkpoints import save_model

    if temperature == 1.0 and stored == 1.0:
        return
    same_last = paths.last.is_file() and _head_digest(paths.last) == weights_digest(model)
    set_temperature(model, temperature)
    write_with(paths.best, functools.partial(save_model, model), suffix=".keras")
    if same_last:  # the same model: the same file, placed atomically (a hard link where it can be)
        place_copy(paths.best, paths.last)


def _head_digest(path) -> str:
    """``ood.weights_digest`` of the model in ``path``, read with NumPy (a fraction of a Keras load) when the
    NumPy engine reads the file, else through Keras."""
    from vgg_cli.model.load import load_model

    try:
        return load_numpy_model(path).digest
    except Declined:
        return weights_digest(load_model(path))
