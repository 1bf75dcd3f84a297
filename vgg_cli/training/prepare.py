"""What both `vgg train` and `vgg lr-find` do before a model exists: resolve a warm start, scan the dataset with
the sticky split of runs/latest, and say what was found; and, for a new run, whether tonight's new images drifted
from the previous run's training images (``night_drift``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from vgg_cli.config.schema import Config
from vgg_cli.data import drift as drift_module
from vgg_cli.data.drift import describe
from vgg_cli.data.images import BadImage, load_image
from vgg_cli.data.index import TRAIN, VAL, DatasetIndex
from vgg_cli.data.layout import apply_layout
from vgg_cli.data.scan import previous_splits_from, require_dir, scan
from vgg_cli.errors import NoInputError, VggError
from vgg_cli.runs.root import LATEST, PRODUCTION, RunsRoot
from vgg_cli.runs.rundir import RunDir

log = logging.getLogger("vgg")


def resolve_warm_start(cfg: Config, runs: RunsRoot) -> Config:
    """model.weights: production|latest -> that run directory in output.dir."""
    if cfg.model.weights not in (PRODUCTION, LATEST):
        return cfg
    link = runs.link(cfg.model.weights)
    if not link.exists():
        raise NoInputError(f"model.weights={cfg.model.weights}: there is no {link} yet; train a first run with "
                           f"model.weights=imagenet (or none), or pass a run directory")
    model = cfg.model.model_copy(update={"weights": str(link.resolve())})
    return cfg.model_copy(update={"model": model})


def resolve_sources(cfg: Config, runs: RunsRoot) -> Config:
    """Where the weights and the images come from: ``resolve_warm_start``, and a dataset of split folders
    (train/, val/, test/) read as such (``vgg_cli.data.layout``); the folders it names must exist."""
    cfg, layout = apply_layout(resolve_warm_start(cfg, runs))
    if layout.kind == "splits":
        log.info("dataset layout: %s", layout.describe())
    for key in ("val_dir", "test_dir"):
        if getattr(cfg.data, key) is not None:
            require_dir(getattr(cfg.data, key), f"data.{key}")
    return cfg


def previous_splits(cfg: Config, runs: RunsRoot) -> dict[str, str]:
    latest = runs.latest()
    if latest is None or not latest.data.is_file():
        return {}
    try:
        return previous_splits_from(latest.read_manifest(), cfg.data)
    except (VggError, ValueError):
        log.warning("could not read %s; splitting without it", latest.data)
        return {}


def log_scan(index: DatasetIndex) -> None:
    counts = index.counts()
    n_train = sum(c[TRAIN] for c in counts.values())
    n_val = sum(c[VAL] for c in counts.values())
    log.info("dataset %s: %d classes, %d train + %d val images, %d skipped", index.train_dir, len(index.classes),
             n_train, n_val, len(index.skipped))
    for s in index.skipped[:20]:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    if len(index.skipped) > 20:
        log.warning("... and %d more skipped files (all listed in data.json)", len(index.skipped) - 20)
    for c in index.excluded_classes:
        log.warning("class folder %r left out: %s", c["class"], c["reason"])


def scan_dataset(cfg: Config, runs: RunsRoot, splits: dict[str, str] | None = None, say: bool = True) -> DatasetIndex:
    """Scan data.train_dir (and val_dir), keeping runs/latest's split (or ``splits``), and log what was found (unless
    ``say`` is False: the caller says it later, ``log_scan``)."""
    index = scan(cfg.data, previous_splits=previous_splits(cfg, runs) if splits is None else splits,
                 cache_dir=runs.cache)
    if say:
        log_scan(index)
    return index


def night_drift(cfg: Config, runs: RunsRoot, index: DatasetIndex) -> dict:
    """Tonight's new images (files the previous run's data.json does not list, or lists with other content) of the
    classes that run knew, against a bounded sample of that run's training images (``vgg_cli.data.drift``); the
    previous run is production's, else latest's. Reads
    only those images, at a small size; a night without new images reads none. New classes are left out (a class
    change is judged by promotion) and listed."""

    t0 = time.perf_counter()
    # Production's training images when there is a production run: a night held for drift (or refused) is not the
    # baseline of the next, so drift is held until a person promotes; else the latest run's.
    production = runs.production()
    latest = RunDir(production) if production is not None else runs.latest()
    if latest is None:
        return {"tested": False, "reason": "no previous run"}
    try:
        manifest = latest.read_manifest()
        same_folder = manifest.get("train_dir") == index.train_dir
        new, ref, new_classes = _new_and_reference(index, manifest) if same_folder else ([], [], {})
    except (VggError, KeyError, TypeError) as e:
        log.warning("drift not tested: the previous run's manifest %s is unreadable (%s)", latest.data, e)
        return {"tested": False, "reason": f"the previous run {latest.name}'s data.json is unreadable"}
    if not same_folder:
        out = {"tested": False, "previous_run": latest.name,
               "reason": f"the previous run {latest.name} trained on another folder ({manifest.get('train_dir')})"}
        log.info("drift: %s", describe(out))
        return out
    out = {"previous_run": latest.name, "baseline": "production" if production is not None else "latest",
           "new_images": len(new), "reference_images": len(ref),
           "new_classes": new_classes}
    if len(new) < MIN_NEW_IMAGES or len(ref) < MIN_NEW_IMAGES:
        out.update(tested=False, reason=f"{len(new)} new images of known classes and {len(ref)} earlier training "
                                        f"images: fewer than {MIN_NEW_IMAGES} on a side")
        log.info("drift: %s", describe(out))
        return out
    out.update(_drift_test(cfg, index, new, ref))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    log.log(logging.WARNING if out.get("flagged") else logging.INFO, "drift: %s", describe(out))
    return out


MIN_NEW_IMAGES = 5  # fewer new images than this are not tested (nor reported as drift)


def _new_and_reference(index: DatasetIndex, manifest: dict) -> tuple[list, list, dict[str, int]]:
    """(new images of known classes, the previous run's training images still here unchanged, new classes' image
    counts) against the previous run's manifest."""
    before = {(f["source"], f["path"]): (f["sha1"], f["split"], f["class"]) for f in manifest["files"]}
    known = set(manifest["classes"])
    new, ref, new_classes = [], [], {}
    for e in index.files:
        name, seen = index.classes[e.label], before.get((e.source, e.path))
        if seen is not None and seen[0] == e.sha1:
            if seen[1] == TRAIN and seen[2] == name:
                ref.append(e)
        elif name in known:
            new.append(e)
        else:
            new_classes[name] = new_classes.get(name, 0) + 1
    return new, ref, new_classes


def feature_drift(cfg: Config, runs: RunsRoot, index: DatasetIndex, drift: dict | None,
                  inputs: dict | None) -> dict | None:
    """After training on cached frozen-prefix features (``inputs``: summary.json "input"): the drift test's samples
    (the same draws as ``night_drift``) compared by their features too, averaged over positions; the verdict is
    made again over all the tests. ``drift`` as it was when there is nothing to add."""
    if not drift or not drift.get("tested") or "features" in drift or not inputs or inputs.get("path") != "features":
        return drift
    try:
        new, ref, _ = _new_and_reference(index, runs.run(drift["previous_run"]).read_manifest())
    except (VggError, KeyError, TypeError):
        return drift
    d, rng = drift_module, np.random.default_rng(cfg.train.seed)
    new_s, ref_s = d.sample(new, d.MAX_NEW, rng), d.sample(ref, d.MAX_REF, rng)
    folder = Path(inputs["cache_dir"])
    sides = []
    # (drawn at random again, never cut short: the samples are in index order, class by class)
    for group in (d.sample(new_s, d.MAX_FEATURES, rng), d.sample(ref_s, d.MAX_FEATURES, rng)):
        rows = []
        for e in group:
            try:
                a = np.load(folder / e.sha1[:2] / f"{e.sha1}.npy", allow_pickle=False)
            except (OSError, ValueError):  # pruned meanwhile: left out
                continue
            rows.append(a.reshape(-1, a.shape[-1]).mean(axis=0))
        sides.append(np.array(rows, np.float64))
    if min(len(s) for s in sides) < 2:
        return drift
    out = drift_module.verdict({**drift, "features": {k: round(v, 6) if isinstance(v, float) else v for k, v in
                                                     drift_module.mmd_test(*sides, seed=cfg.train.seed).items()}})
    log.log(logging.WARNING if out["flagged"] else logging.INFO, "drift with the frozen features: %s", describe(out))
    return out


def _drift_test(cfg: Config, index: DatasetIndex, new: list, ref: list) -> dict:
    """Sample, read and compare (``night_drift``)."""
    rng = np.random.default_rng(cfg.train.seed)
    new_s, ref_s = drift_module.sample(new, drift_module.MAX_NEW, rng), drift_module.sample(ref, drift_module.MAX_REF, rng)
    size = min(cfg.data.image_size, drift_module.STATS_SIZE)
    stats, unreadable = [], 0
    for group in (new_s, ref_s):
        rows = []
        for e in group:
            try:
                rows.append(drift_module.image_stats(load_image(index.root_of(e) / e.path, size, cfg.data.resize)))
            except (BadImage, OSError):  # changed since the scan: left out of the test
                unreadable += 1
        stats.append(np.array(rows).reshape(-1, len(drift_module.STATS)))
    counts = [{}, {}]
    for side, group in zip(counts, (new, ref)):
        for e in group:
            side[index.classes[e.label]] = side.get(index.classes[e.label], 0) + 1
    result = drift_module.compare(stats[0], stats[1], counts[0], counts[1], seed=cfg.train.seed)
    return {"tested": True, "sampled": {"new": len(stats[0]), "reference": len(stats[1]), "unreadable": unreadable},
            **result}
