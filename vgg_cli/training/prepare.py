"""What both `vgg train` and `vgg lr-find` do before a model exists: resolve a warm start, scan the dataset with
the sticky split of runs/latest, and say what was found."""

from __future__ import annotations

import logging

from vgg_cli.config.schema import Config
from vgg_cli.data.layout import apply_layout
from vgg_cli.data.scan import TRAIN, VAL, DatasetIndex, previous_splits_from, require_dir, scan
from vgg_cli.errors import NoInputError, VggError
from vgg_cli.runs.root import LATEST, PRODUCTION, RunsRoot

log = logging.getLogger("vgg")


def resolve_warm_start(cfg: Config) -> Config:
    """model.weights: production|latest -> that run directory in output.dir."""
    if cfg.model.weights not in (PRODUCTION, LATEST):
        return cfg
    link = RunsRoot.of(cfg).path / cfg.model.weights
    if not link.exists():
        raise NoInputError(f"model.weights={cfg.model.weights}: there is no {link} yet; train a first run with "
                           f"model.weights=imagenet (or none), or pass a run directory")
    model = cfg.model.model_copy(update={"weights": str(link.resolve())})
    return cfg.model_copy(update={"model": model})


def resolve_sources(cfg: Config) -> Config:
    """Where the weights and the images come from: ``resolve_warm_start``, and a dataset of split folders
    (train/, val/, test/) read as such (``vgg_cli.data.layout``); the folders it names must exist."""
    cfg, layout = apply_layout(resolve_warm_start(cfg))
    if layout.kind == "splits":
        log.info("dataset layout: %s", layout.describe())
    for key in ("val_dir", "test_dir"):
        if getattr(cfg.data, key) is not None:
            require_dir(getattr(cfg.data, key), f"data.{key}")
    return cfg


def previous_splits(cfg: Config) -> dict[str, str]:
    latest = RunsRoot.of(cfg).latest()
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


def scan_dataset(cfg: Config, splits: dict[str, str] | None = None) -> DatasetIndex:
    """Scan data.train_dir (and val_dir), keeping runs/latest's split (or ``splits``), and log what was found."""
    index = scan(cfg.data, previous_splits=previous_splits(cfg) if splits is None else splits,
                 cache_dir=RunsRoot.of(cfg).cache)
    log_scan(index)
    return index
