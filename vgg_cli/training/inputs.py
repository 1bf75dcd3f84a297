"""What feeds a training phase: cached frozen-prefix features when the leading blocks are frozen and augmentation
is off, otherwise images (with the RAM image cache); and the model view that trains on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from vgg_cli.data.features import FeatureSource
from vgg_cli.data.index import TRAIN, VAL
from vgg_cli.data.pipeline import ImageSource
from vgg_cli.model.build import logits_view, split_frozen_prefix
from vgg_cli.model.optim import compile_model
from vgg_cli.platform.distribute import local_predictor
from vgg_cli.training.standardize import fit_standardize


@dataclass
class PhaseInputs:
    """What feeds training: a source of per-image arrays and the model that trains on them (a view of the saved
    model, sharing its layers and optimizer, that outputs logits: the loss is computed from them)."""
    source: object
    fit_model: keras.Model
    info: dict  # summary.json "input": which path ran and why, cache use
    train_ids: list[int]
    val_ids: list[int]
    labels: np.ndarray
    cache_root: Path | None = None  # the feature cache folder, and the entries this run uses (never pruned)
    cache_entries: frozenset = frozenset()


def input_plan(session, model: keras.Model, stop_check, frozen_blocks: tuple[int, ...]) -> PhaseInputs:
    """Cached frozen-prefix features when the session's feature cut for ``frozen_blocks`` (this phase's) says so
    (``Session.cut``: the leading blocks frozen, augmentation and the cache on); else images (with the RAM image
    cache when enabled). ``session``: a ``vgg_cli.training.session.Session``. A new head's standardisation
    (``model.head.norm: standard``) is fitted here, on what feeds the phase, before any step (training or lr-find)."""
    plan = _plan(session, model, stop_check, frozen_blocks)
    blocks = plan.info.get("frozen_prefix_blocks") if plan.info["path"] == "features" else None
    fitted = fit_standardize(model, plan.source, plan.train_ids, blocks, session.cfg.train.batch_size, stop_check,
                             session.cfg.train.seed)
    if fitted is not None:
        plan.info["standardize"] = fitted
    return plan


def _plan(session, model: keras.Model, stop_check, frozen_blocks: tuple[int, ...]) -> PhaseInputs:
    cfg, index = session.cfg, session.index
    entries = [e for e in index.files if e.split == TRAIN] + [e for e in index.files if e.split == VAL]
    n_train = sum(1 for e in entries if e.split == TRAIN)
    files = [str(index.root_of(e) / e.path) for e in entries]
    labels = np.asarray([e.label for e in entries], np.int32)
    ids = list(range(len(entries)))
    ram = cfg.cache.ram_mb * 2**20
    cut = session.cut(frozen_blocks)
    if cut.cached:
        blocks = cut.blocks
        prefix, rest = split_frozen_prefix(model, blocks)
        store = session.store(prefix, blocks)
        source = FeatureSource(store, [e.sha1 for e in entries], ram)
        t0 = time.perf_counter()
        # every process of a distributed job needs every feature, and may find a different part of it cached
        source.fill(local_predictor(prefix), files, cfg.data.image_size, cfg.train.batch_size, stop_check,
                    resize=cfg.data.resize)
        compile_model(rest, cfg.train, len(index.classes), optimizer=model.optimizer, from_logits=True,
                      task=session.plan.task)
        after = f"block{blocks}_pool" + (" (the whole backbone: head-only training)" if blocks == 5 else "")
        info = {"path": "features", "frozen_prefix_blocks": blocks, "cache_dir": str(store.dir),
                "computed": source.computed, "reused": source.reused, "in_ram": source.ram_items,
                "entries": len(source.unique), "mib": round(len(source.unique) * source.item_bytes / 2**20, 2),
                "seconds": round(time.perf_counter() - t0, 2),
                "description": f"cached features: frozen blocks 1-{blocks} ran once per image, training runs "
                               f"after {after}; {source.describe()}"}
        return PhaseInputs(source, rest, info, ids[:n_train], ids[n_train:], labels, store.dir.parent,
                         frozenset(store.path(s) for s in source.unique))
    source = ImageSource(files, cfg.data.image_size, ram if cfg.cache.images == "auto" else 0,
                         resize=cfg.data.resize)
    info = {"path": "images", "why": cut.why_not, "in_ram": source.ram_items,
            "description": f"whole network every epoch ({cut.why_not}); {source.describe()}"}
    fit_model = logits_view(model)
    compile_model(fit_model, cfg.train, len(index.classes), optimizer=model.optimizer, from_logits=True,
                  task=session.plan.task)
    return PhaseInputs(source, fit_model, info, ids[:n_train], ids[n_train:], labels)
