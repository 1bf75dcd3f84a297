"""A trained run's suspected label errors (``label_issues``): out-of-sample probabilities of its validation images
(the model) and, when training was head-only, of its training images (k-fold on the frozen features), ranked into
``label_issues.csv`` and ``label_issues.png`` in the run folder. Written right after a run's validation evaluation
(``evaluate``), and by ``vgg check --labels RUN``."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from vgg_cli.errors import VggError
from vgg_cli.evaluation.label_issues import FOLDS, confident_learning, out_of_fold
from vgg_cli.fsio import write_text
from vgg_cli.runs.rundir import RunDir

log = logging.getLogger("vgg")
FLAT_MAX = 8192  # features up to this size are used as they are (the spatial layout kept)
GALLERY = 24  # suspects shown in label_issues.png
COLUMNS = ["rank", "path", "split", "given_class", "suggested_class", "given_class_probability",
           "suggested_class_probability", "probabilities_from"]


def head_only_why_not(cfg) -> str | None:
    """Why the training images' features are not out-of-sample evidence (None when they are)."""
    if sorted(set(cfg.model.freeze_blocks)) != [1, 2, 3, 4, 5]:
        return f"model.freeze_blocks={cfg.model.freeze_blocks}: the backbone trained on them"
    if cfg.finetune.epochs:
        return "finetune.epochs > 0: the backbone trained on them"
    if cfg.augment.active:
        return "augmentation is on: no cached features"
    return None


def _features(model, cfg, run: RunDir, paths: list[str], shas: list[str], batch_size: int) -> tuple[np.ndarray, int]:
    """The frozen backbone's output of each image (flat; averaged over space when larger than FLAT_MAX), read from
    the feature cache when it has it; (features, how many were read from the cache)."""
    from vgg_cli.data.features import FeatureStore, prefix_key
    from vgg_cli.data.images import load_image
    from vgg_cli.model.build import split_frozen_prefix
    from vgg_cli.runs.root import RunsRoot

    prefix, _ = split_frozen_prefix(model, 5)
    size, resize = cfg.data.image_size, cfg.data.resize
    shape = tuple(int(d) for d in prefix.output.shape[1:])
    store = FeatureStore(RunsRoot.of_run(run).feature_cache(cfg.cache.dir),
                         prefix_key(prefix, cfg.model.arch, 5, size, resize), shape, prefix.output.dtype)
    width = int(np.prod(shape)) if np.prod(shape) <= FLAT_MAX else shape[-1]
    out = np.zeros((len(paths), width), dtype=np.float32)
    missing, buf = [], np.empty(shape, dtype=store.dtype)
    for i, sha in enumerate(shas):
        if store.load_into(sha, buf):
            out[i] = buf.reshape(-1, width).mean(axis=0)
        else:
            missing.append(i)
    for start in range(0, len(missing), batch_size):
        rows = missing[start:start + batch_size]
        batch = np.stack([load_image(paths[i], size, resize) for i in rows])
        acts = np.asarray(prefix.predict(batch, verbose=0), dtype=np.float32)
        out[rows] = acts.reshape(len(rows), -1, width).mean(axis=1)
    return out, len(paths) - len(missing)


def _rows(idx: np.ndarray, labels, probs, paths, split, classes, source) -> list[dict]:
    return [{"path": paths[i], "split": split, "given_class": classes[labels[i]],
             "suggested_class": classes[int(np.argmax(probs[i]))],
             "given_class_probability": float(probs[i, labels[i]]),
             "suggested_class_probability": float(probs[i].max()), "probabilities_from": source} for i in idx]


def _validation_part(model, run: RunDir, scored, batch_size: int) -> tuple[list[dict], int]:
    from vgg_cli.evaluation.evaluate import score, validation_set

    if scored is None:
        scored = score(model, validation_set(run.root), batch_size)
    classes = scored.classes
    probs = np.array([[dict(r.top).get(c, 0.0) for c in classes] for r, _ in scored.scored])
    labels = np.asarray(scored.truth)
    paths = [r.path for r, _ in scored.scored]
    found = confident_learning(labels, probs) if len(labels) else np.array([], dtype=int)
    return _rows(found, labels, probs, paths, "val", classes, "the model (validation image)"), len(labels)


def _training_part(model, cfg, run: RunDir, batch_size: int) -> tuple[list[dict], int, str]:
    from vgg_cli.data.scan import TRAIN, index_from_manifest

    why_not = head_only_why_not(cfg)
    if why_not is not None:
        return [], 0, f"training images not examined ({why_not}); only the validation split"
    index = index_from_manifest(run.read_manifest())
    entries = [e for e in index.files if e.split == TRAIN]
    paths = [str(index.root_of(e) / e.path) for e in entries]
    labels = np.array([e.label for e in entries])
    try:
        features, cached = _features(model, cfg, run, paths, [e.sha1 for e in entries], batch_size)
    except (VggError, ValueError, OSError) as e:
        return [], 0, f"training images not examined (their features could not be made: {e})"
    probs = out_of_fold(features, labels, len(index.classes))
    found = confident_learning(labels, probs)
    how = f"{FOLDS}-fold logistic regression on the frozen features"
    return (_rows(found, labels, probs, paths, "train", index.classes, how), len(entries),
            f"training images: {how} ({cached} of {len(entries)} read from the feature cache)")


def find_run_label_issues(run_dir: Path, model=None, scored=None, batch_size: int = 32) -> dict:
    """Rank a run's suspected label errors; write label_issues.csv (and its gallery). ``scored``: the run's
    validation ``Scored`` when the caller has it."""
    from vgg_cli.config.schema import load_run_config
    from vgg_cli.model.load import load_model

    run = RunDir(Path(run_dir))
    model = model if model is not None else load_model(run.model_file())
    cfg = load_run_config(run.config)
    try:
        val_rows, n_val = _validation_part(model, run, scored, batch_size)
    except VggError as e:  # no validation images (or none readable)
        val_rows, n_val = [], 0
        log.info("label issues: validation split not examined (%s)", e)
    train_rows, n_train, how = _training_part(model, cfg, run, batch_size)
    rows = sorted(val_rows + train_rows, key=lambda r: r["given_class_probability"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    write_text(run.label_issues, _csv(rows))
    result = {"examined": {"val": n_val, "train": n_train}, "how": how, "suspects": rows,
              "csv": str(run.label_issues)}
    result["gallery"] = _gallery(rows, run)
    log.info("label issues: %d suspected label error(s) among %d validation + %d training images (%s); ranked in %s",
             len(rows), n_val, n_train, how, run.label_issues)
    return result


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["rank"], r["path"], r["split"], r["given_class"], r["suggested_class"],
                    f"{r['given_class_probability']:.6f}", f"{r['suggested_class_probability']:.6f}",
                    r["probabilities_from"]])
    return buf.getvalue()


def _gallery(rows: list[dict], run: RunDir) -> str | None:
    """label_issues.png: the most suspect images, one row per given class, each tile saying what it looks like."""
    from vgg_cli.evaluation.gallery import thumbnail
    from vgg_cli.reporting.plots import class_rows

    if not rows:
        return None
    groups: dict[str, list] = {}
    for r in rows[:GALLERY]:
        name = Path(r["path"]).name
        caption = f"{name[:28]}\nlooks like {r['suggested_class']} {r['suggested_class_probability']:.2f}"
        groups.setdefault(r["given_class"], []).append((thumbnail(r["path"]), caption, False))
    class_rows([(c, f"labelled {c}", tiles) for c, tiles in groups.items()], run.label_issues_png,
               f"suspected label errors: the {min(GALLERY, len(rows))} most suspect of {len(rows)}, one row per "
               f"given class", min(6, max(len(t) for t in groups.values())))
    return str(run.label_issues_png)


def format_suspects(found: dict, limit: int = 50) -> str:
    """`vgg check --labels`: the ranked suspects as a table."""
    rows, n = found["suspects"], found["examined"]
    lines = [f"suspected label errors: {len(rows)} among {n['val']} validation + {n['train']} training images "
             f"({found['how']})"]
    if rows:
        width = max(len("labelled"), *(len(r["given_class"]) for r in rows[:limit]))
        lines.append(f"  {'rank':>4}  {'p(label)':>8}  {'labelled':<{width}}  looks like  split  file")
        for r in rows[:limit]:
            looks = f"{r['suggested_class']} {r['suggested_class_probability']:.2f}"
            lines.append(f"  {r['rank']:>4}  {r['given_class_probability']:>8.3f}  {r['given_class']:<{width}}  "
                         f"{looks:<10}  {r['split']:<5}  {r['path']}")
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more")
    lines.append(f"written to {found['csv']}")
    return "\n".join(lines) + "\n"
