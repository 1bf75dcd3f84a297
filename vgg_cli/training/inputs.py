"""What feeds a training phase: cached frozen-prefix features when the leading blocks are frozen and augmentation
is off, otherwise images (with the RAM image cache); and the model view that trains on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from vgg_cli.config.schema import Config
from vgg_cli.data.scan import TRAIN, VAL, DatasetIndex
from vgg_cli.platform.distribute import local_predictor
from vgg_cli.runs.root import RunsRoot


@dataclass
class InputPlan:
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


def input_plan(cfg: Config, index: DatasetIndex, model: keras.Model, stop_check,
                frozen_blocks: tuple[int, ...]) -> InputPlan:
    """Cached frozen-prefix features when the leading blocks (of ``frozen_blocks``, this phase's) are frozen and
    augmentation is off; else images (with the RAM image cache when enabled)."""
    from vgg_cli.data.pipeline import ImageSource
    from vgg_cli.model.build import frozen_prefix_blocks

    entries = [e for e in index.files if e.split == TRAIN] + [e for e in index.files if e.split == VAL]
    n_train = sum(1 for e in entries if e.split == TRAIN)
    files = [str(index.root_of(e) / e.path) for e in entries]
    labels = np.asarray([e.label for e in entries], np.int32)
    ids = list(range(len(entries)))
    ram = cfg.cache.ram_mb * 2**20
    blocks = frozen_prefix_blocks(frozen_blocks)
    why_not = None
    if cfg.cache.features == "off":
        why_not = "cache.features=off"
    elif cfg.augment.active:
        why_not = "augmentation is on"
    elif blocks == 0:
        why_not = "block 1 is not frozen"
    if why_not is None:
        from vgg_cli.data.features import FeatureSource, FeatureStore, prefix_key
        from vgg_cli.model.build import split_frozen_prefix
        from vgg_cli.model.optim import compile_model

        prefix, rest = split_frozen_prefix(model, blocks)
        key = prefix_key(prefix, cfg.model.arch, blocks, cfg.data.image_size, cfg.data.resize)
        root = RunsRoot.of(cfg).feature_cache(cfg.cache.dir)
        shape = tuple(int(d) for d in prefix.output.shape[1:])
        store = FeatureStore(root, key, shape, prefix.output.dtype)
        source = FeatureSource(store, [e.sha1 for e in entries], ram)
        t0 = time.perf_counter()
        # every process of a distributed job needs every feature, and may find a different part of it cached
        source.fill(local_predictor(prefix), files, cfg.data.image_size, cfg.train.batch_size, stop_check,
                    resize=cfg.data.resize)
        compile_model(rest, cfg.train, len(index.classes), optimizer=model.optimizer, from_logits=True)
        cut = f"block{blocks}_pool" + (" (the whole backbone: head-only training)" if blocks == 5 else "")
        info = {"path": "features", "frozen_prefix_blocks": blocks, "cache_dir": str(store.dir),
                "computed": source.computed, "reused": source.reused, "in_ram": source.ram_items,
                "entries": len(source.unique), "mib": round(len(source.unique) * source.item_bytes / 2**20, 2),
                "seconds": round(time.perf_counter() - t0, 2),
                "description": f"cached features: frozen blocks 1-{blocks} ran once per image, training runs "
                               f"after {cut}; {source.describe()}"}
        return InputPlan(source, rest, info, ids[:n_train], ids[n_train:], labels, root,
                         frozenset(store.path(s) for s in source.unique))
    from vgg_cli.model.build import logits_view
    from vgg_cli.model.optim import compile_model

    source = ImageSource(files, cfg.data.image_size, ram if cfg.cache.images == "auto" else 0,
                         resize=cfg.data.resize)
    info = {"path": "images", "why": why_not, "in_ram": source.ram_items,
            "description": f"whole network every epoch ({why_not}); {source.describe()}"}
    fit_model = logits_view(model)
    compile_model(fit_model, cfg.train, len(index.classes), optimizer=model.optimizer, from_logits=True)
    return InputPlan(source, fit_model, info, ids[:n_train], ids[n_train:], labels)
