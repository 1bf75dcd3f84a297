"""The head's standardisation (``model.head.norm: standard``): fitted once, before a new head's first step, from
the training images' pooled features, and stored in the model (``vgg_cli.model.layers.Standardize``)."""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from vgg_cli.model.build import STANDARDIZE, standardize_input_view
from vgg_cli.model.layers import Standardize
from vgg_cli.platform.distribute import local_predictor

log = logging.getLogger("vgg")

# How many training images the statistics come from. From cached features the pass is nearly free, so (almost)
# all; from images it is a forward pass of the network, so a sample: 512 pin a mean and spread to a few percent.
MAX_FROM_FEATURES = 8192
MAX_FROM_IMAGES = 512
# A feature that barely varies over the training images is divided by at least this fraction of the median
# spread, not by its own near-zero one: one image that moves it would otherwise swamp every other feature.
SPREAD_FLOOR = 0.1


def standardize_layer(model: keras.Model) -> Standardize | None:
    try:
        layer = model.get_layer(STANDARDIZE)
    except ValueError:
        return None
    return layer if isinstance(layer, Standardize) else None


def fit_standardize(model: keras.Model, source, train_ids, blocks: int | None, batch_size: int,
                    stop_check=None, seed: int = 0) -> dict | None:
    """Fit the head's ``Standardize`` from the features of (a sample of) ``train_ids`` read from ``source``
    (``block{blocks}_pool`` activations, or images when ``blocks`` is None). Nothing to do (None) when the model has
    no such layer or it is already fitted (a resumed run, a production head kept). Returns what summary.json keeps."""
    layer = standardize_layer(model)
    if layer is None or float(keras.ops.convert_to_numpy(layer.images)) > 0:
        return None
    t0 = time.perf_counter()
    ids = np.asarray(sorted(train_ids), np.int64)
    cap = MAX_FROM_IMAGES if blocks is None else MAX_FROM_FEATURES
    if len(ids) > cap:
        ids = np.sort(np.random.default_rng(seed).choice(ids, cap, replace=False))
    predict = local_predictor(standardize_input_view(model, blocks))
    total = squares = None
    for start in range(0, len(ids), batch_size):
        if stop_check is not None:
            stop_check()
        f = np.asarray(predict(source.get(ids[start:start + batch_size])), np.float64)
        f = f.reshape(len(f), -1)
        total = f.sum(0) if total is None else total + f.sum(0)
        squares = (f * f).sum(0) if squares is None else squares + (f * f).sum(0)
    n = len(ids)
    mean = total / n
    spread = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
    live = spread[spread > 0]
    floor = max(SPREAD_FLOOR * float(np.median(live)) if live.size else 1.0, 1e-6)
    inv = 1.0 / np.maximum(spread, floor)
    layer.mean.assign(mean.astype(np.float32))
    layer.inv_std.assign(inv.astype(np.float32))
    layer.images.assign(np.float32(n))
    info = {"images": n, "features": int(mean.size), "floored": int((spread < floor).sum()),
            "mean_offset": round(float(np.mean(np.abs(mean))), 6), "median_spread": round(float(np.median(spread)), 6),
            "seconds": round(time.perf_counter() - t0, 2)}
    log.info("head standardisation: fitted on %d training images' pooled features (%d features: mean |offset| "
             "%.3g, median spread %.3g%s)", n, info["features"], info["mean_offset"], info["median_spread"],
             f"; {info['floored']} barely varying, divided by at least {floor:.3g}" if info["floored"] else "")
    return info
