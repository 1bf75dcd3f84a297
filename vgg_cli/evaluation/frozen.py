"""A finished run's frozen leading blocks, read back from its feature cache: what the end of a run needs of every
training and validation image (calibration's logits and head features, the label-issue search's features, the
answers of the validation evaluation and of promotion's comparisons: ``predictions``, ``cached_scores``) without
running the frozen convolutions again. Training stored each image's frozen-prefix output under its
content hash (``vgg_cli.data.features``); an image the cache does not hold (pruned, ``cache.features: off``) goes
through the frozen prefix here, so the answer is the same either way, to float rounding.

``open_frozen`` cuts the run's model after its frozen blocks. The cut calls the model's layers again (see
``vgg_cli.model.build.split_after``), so a caller that needs the whole model's graph afterwards (``Forward``) loads
its own copy of the model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from vgg_cli.config.schema import load_run_config
from vgg_cli.data.features import feature_cut, feature_store
from vgg_cli.data.images import BadImage, load_image
from vgg_cli.data.index import index_from_manifest
from vgg_cli.errors import VggError
from vgg_cli.evaluation.scoring import scored_from
from vgg_cli.inference.predict import Options, Prediction, answer_rows, load_or_reason
from vgg_cli.runs.root import RunsRoot

log = logging.getLogger("vgg")


@dataclass
class Frozen:
    """The run's model cut after ``blocks``: ``prefix`` (images -> activations), ``rest`` (activations -> logits)
    and the feature store training filled."""
    blocks: int
    prefix: object
    rest: object
    store: object
    size: int
    resize: str

    def batches(self, paths: list[str], shas: list[str], batch_size: int,
                skip_unreadable: bool = False) -> Iterator[tuple[list[int], np.ndarray, int]]:
        """(indices into ``paths``, their frozen-prefix activations, how many came from the cache) per batch. An
        image without a content hash (None) goes through the prefix; one neither cached nor readable raises, or
        with ``skip_unreadable`` is left out of every batch."""

        buf = np.empty(self.store.shape, dtype=self.store.dtype)
        for start in range(0, len(paths), batch_size):
            rows, acts, cached, missing = [], [], 0, []
            for i in range(start, min(start + batch_size, len(paths))):
                if shas[i] is not None and self.store.load_into(shas[i], buf):
                    rows.append(i)
                    acts.append(buf.copy())
                    cached += 1
                else:
                    missing.append(i)
            decoded = []
            for i in missing:
                try:
                    decoded.append((i, load_image(paths[i], self.size, self.resize)))
                except (BadImage, OSError, ValueError, VggError):
                    if not skip_unreadable:
                        raise
            if decoded:
                got = np.asarray(self.prefix.predict(np.stack([x for _, x in decoded]), verbose=0))
                rows += [i for i, _ in decoded]
                acts += list(got.astype(self.store.dtype, copy=False))
            if rows:
                yield rows, np.stack(acts), cached


def open_frozen(model, cfg, run, runs: RunsRoot | None = None) -> Frozen | None:
    """``model`` (the run's, loaded from its directory ``run``, a ``RunDir``) cut after its frozen blocks with the
    run's feature store, or None when training did not feed on cached features (``feature_cut``, the decision
    training took: the cache off, augmentation, block 1 trained). ``runs``: the runs folder, when the caller has
    it (else the run's parent)."""
    from vgg_cli.model.build import split_frozen_prefix

    cut = feature_cut(cfg)
    if not cut.cached:
        return None
    blocks = cut.blocks
    prefix, rest = split_frozen_prefix(model, blocks)
    store = feature_store(runs or RunsRoot.of_run(run), cfg, prefix, blocks)
    size, resize = cfg.data.image_size, cfg.data.resize
    return Frozen(blocks, prefix, rest, store, size, resize)


def head_outputs(frozen: Frozen, paths: list[str], shas: list[str], batch_size: int,
                 features: bool) -> tuple[list[int], np.ndarray, np.ndarray | None, int]:
    """The logits (temperature 1) and, with ``features``, the head's penultimate features of each readable image:
    (indices into ``paths``, logits, features or None, how many came from the feature cache)."""
    import keras

    from vgg_cli.model.build import head_tensors

    outputs = [frozen.rest.outputs[0]] + ([head_tensors(frozen.rest)[0]] if features else [])
    view = keras.Model(frozen.rest.inputs, outputs, name="rest_head")
    rows, logits, feats, cached = [], [], [], 0
    for idx, acts, hits in frozen.batches(paths, shas, batch_size, skip_unreadable=True):
        got = view.predict_on_batch(acts)
        got = got if isinstance(got, (list, tuple)) else [got]
        rows += idx
        logits.append(np.asarray(got[0], np.float64))
        if features:
            feats.append(np.asarray(got[1], np.float64))
        cached += hits
    if not rows:
        return [], np.zeros((0, 0)), None, 0
    return rows, np.concatenate(logits), np.concatenate(feats) if features else None, cached


def predictions(frozen: Frozen, model, files: list[str], shas: list[str], batch_size: int, options) -> tuple[list, int]:
    """A ``predict.Prediction`` of each of ``files``, as ``predict_files(model, files, ..., options=options)``
    answers it (no test-time augmentation), from the cached frozen features through the trainable rest: the same
    logits and features to float rounding, the probabilities the model's ``TemperatureSoftmax`` computes
    (softmax of logits / temperature). Returns (predictions, how many came from the feature cache). ``model`` is
    the one ``frozen`` was cut from."""
    from vgg_cli.model.load import class_names_of, temperature_of

    classes = class_names_of(model)
    rows, logits, feats, cached = head_outputs(frozen, files, shas, batch_size, options.needs_features)
    by_file: dict[int, Prediction] = {}
    if rows:
        z = logits.astype(np.float32)
        t = np.float32(temperature_of(model) if options.calibrated else 1.0)
        out = {"probabilities": options.task.probabilities((z / t).astype(np.float32)).astype(np.float32),
               "logits": z}
        if feats is not None:
            out["features"] = feats.astype(np.float32)
        by_file = dict(zip(rows, answer_rows([files[i] for i in rows], out, classes, len(classes), options)))
    unread = [i for i in range(len(files)) if i not in by_file]
    for i in unread:  # neither cached nor decodable: say why, as predict_files does
        reason = load_or_reason(files[i], frozen.size, frozen.resize)
        by_file[i] = Prediction(files[i], error=reason if isinstance(reason, str) else "unreadable")
    return [by_file[i] for i in range(len(files))], cached


def cached_scores(model, run, data, shas: list[str | None], batch_size: int, options=None, cfg=None, runs=None):
    """``scoring.score(model, data, batch_size, options=options)`` (no test-time augmentation) answered from the
    feature cache of ``run`` (the ``RunDir`` ``model`` was loaded from; ``cfg``: its config, read from the run
    when not given) through the trainable rest: ``predictions``. ``shas``: the content hash of each of
    ``data.files`` (None: computed through the frozen blocks). None when the run had no frozen prefix or its
    model cannot be cut (the caller scores on the images). Cuts ``model`` (see the module's note): afterwards it
    serves what ``evaluate.evaluate`` asks of it without Grad-CAM."""
    from vgg_cli.model.load import class_names_of

    try:
        frozen = open_frozen(model, cfg or load_run_config(run.config), run, runs)
    except (ValueError, OSError, VggError) as e:  # a model vgg did not cut this way, an unreadable config
        log.debug("%s: the frozen blocks cannot be cut off (%s); the whole model scores", run.name, e)
        return None
    if frozen is None:
        return None
    options = options or Options()
    got, cached = predictions(frozen, model, data.files, shas, batch_size, options)
    log.debug("%s: %d of %d images answered from the feature cache", run.name, cached, len(data.files))
    return scored_from(class_names_of(model), got, data, f"the feature cache of frozen blocks 1-{frozen.blocks} "
                       f"({cached} of {len(data.files)} images) and the trainable rest", options.task)


def cached_validation(model, run, data, batch_size: int, options, cfg=None, runs=None):
    """``cached_scores`` of the run's own validation split ``data`` (``scoring.validation_set``), the content
    hashes read from its data.json: what the end of a run and ``vgg evaluate`` without DATA_DIR score."""

    shas = content_hashes(index_from_manifest(run.read_manifest()), data.files)
    return cached_scores(model, run, data, shas, batch_size, options, cfg, runs)


def content_hashes(index, files: list[str]) -> list[str | None]:
    """The sha1 in ``index`` (a ``DatasetIndex``) of each of ``files`` (paths as its ``split`` gives them), None
    for a file it does not hold: the feature cache's keys."""
    sha_of = {str(index.root_of(e) / e.path): e.sha1 for e in index.files}
    return [sha_of.get(str(f)) for f in files]
