"""A trained run's suspected label errors (``label_issues``): out-of-sample probabilities of every image by a k-fold
logistic regression on the frozen blocks' features (they never saw a label) when the run has frozen leading blocks
(the default, head-only, has all five), else of its validation images by the trained model; ranked into
``label_issues.csv`` and ``label_issues.png`` in the run folder. Written right after a run's validation evaluation
(``evaluate``), and by ``vgg check --labels RUN``."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from vgg_cli.config.schema import load_run_config
from vgg_cli.data.features import feature_cut
from vgg_cli.data.index import TRAIN, VAL, index_from_manifest
from vgg_cli.errors import VggError
from vgg_cli.evaluation.confident_learning import FOLDS, find_suspects, out_of_fold
from vgg_cli.evaluation.frozen import open_frozen
from vgg_cli.evaluation.gallery import thumbnail
from vgg_cli.evaluation.scoring import score, validation_set
from vgg_cli.fsio import write_text
from vgg_cli.reporting.plots import class_rows
from vgg_cli.runs.rundir import RunDir

log = logging.getLogger("vgg")
FLAT_MAX = 8192  # features up to this size are used as they are (the spatial layout kept)
GALLERY = 24  # suspects shown in label_issues.png
COLUMNS = ["rank", "path", "split", "given_class", "suggested_class", "given_class_probability",
           "suggested_class_probability", "probabilities_from"]


def _features(model, cfg, run: RunDir, paths: list[str], shas: list[str], batch_size: int,
              runs=None) -> tuple[np.ndarray, int]:
    """The frozen backbone's output of each image (flat; averaged over space when larger than FLAT_MAX), read from
    the feature cache when it has it; (features, how many were read from the cache)."""
    frozen = open_frozen(model, cfg, run, runs)
    shape = frozen.store.shape
    width = int(np.prod(shape)) if np.prod(shape) <= FLAT_MAX else shape[-1]
    out = np.zeros((len(paths), width), dtype=np.float32)
    cached = 0
    for rows, acts, hits in frozen.batches(paths, shas, batch_size):
        out[rows] = acts.astype(np.float32).reshape(len(rows), -1, width).mean(axis=1)
        cached += hits
    return out, cached


def _rows(idx: np.ndarray, labels, probs, paths, split, classes, source) -> list[dict]:
    return [{"path": paths[i], "split": split, "given_class": classes[labels[i]],
             "suggested_class": classes[int(np.argmax(probs[i]))],
             "given_class_probability": float(probs[i, labels[i]]),
             "suggested_class_probability": float(probs[i].max()), "probabilities_from": source} for i in idx]


def _validation_part(model, run: RunDir, scored, batch_size: int) -> tuple[list[dict], int]:

    if scored is None:
        scored = score(model, validation_set(run.root), batch_size)
    classes = scored.classes
    probs = np.array([[dict(r.top).get(c, 0.0) for c in classes] for r, _ in scored.scored])
    labels = np.asarray(scored.truth)
    paths = [r.path for r, _ in scored.scored]
    found = find_suspects(labels, probs) if len(labels) else np.array([], dtype=int)
    return _rows(found, labels, probs, paths, "val", classes, "the model (validation image)"), len(labels)


def _kfold_part(model, cfg, run: RunDir, batch_size: int, runs=None) -> tuple[list[dict], dict, str] | None:
    """Every image of the run (training and validation) by k-fold on the frozen blocks' features: (rows, images
    examined per split, how), or None when there are no frozen features to use."""

    cut = feature_cut(cfg)  # the frozen blocks' features never saw a label: the search fits on them honestly
    if not cut.cached:
        log.info("label issues: training images not examined (no cached frozen features: %s); only the "
                 "validation split", cut.why_not)
        return None
    blocks = cut.blocks
    index = index_from_manifest(run.read_manifest())
    entries = index.files
    paths = [str(index.root_of(e) / e.path) for e in entries]
    labels = np.array([e.label for e in entries])
    try:
        features, cached = _features(model, cfg, run, paths, [e.sha1 for e in entries], batch_size, runs)
    except (VggError, ValueError, OSError) as e:
        log.warning("label issues: the frozen features could not be made (%s); only the validation split", e)
        return None
    probs = out_of_fold(features, labels, len(index.classes))
    found = find_suspects(labels, probs)
    how = f"{FOLDS}-fold logistic regression on the features of the frozen blocks 1-{blocks}"
    rows = [r | {"split": entries[i].split} for r, i in zip(
        _rows(found, labels, probs, paths, "", index.classes, how), found)]
    examined = {VAL: sum(e.split == VAL for e in entries), TRAIN: sum(e.split == TRAIN for e in entries)}
    return rows, examined, f"{how}, every image out of fold ({cached} of {len(entries)} read from the feature cache)"


def find_run_label_issues(run_dir: Path, model=None, scored=None, batch_size: int = 32, runs=None) -> dict:
    """Rank a run's suspected label errors; write label_issues.csv (and its gallery). The frozen blocks' features
    when there are any (every image, one calibration), else the model on the validation split (``scored``: its
    ``Scored`` when the caller has it)."""
    from vgg_cli.model.load import load_model

    run = RunDir(Path(run_dir))
    model = model if model is not None else load_model(run.model_file())
    kfold = _kfold_part(model, load_run_config(run.config), run, batch_size, runs)
    if kfold is not None:
        rows, examined, how = kfold
    else:
        how = "the model's probabilities on the validation split (training images not examined: no frozen features)"
        try:
            rows, n_val = _validation_part(model, run, scored, batch_size)
        except VggError as e:  # no validation images (or none readable)
            rows, n_val = [], 0
            how = f"nothing examined: {e}"
        examined = {"val": n_val, "train": 0}
    rows.sort(key=lambda r: r["given_class_probability"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    write_text(run.label_issues, _csv(rows))
    result = {"examined": examined, "how": how, "suspects": rows, "csv": str(run.label_issues)}
    result["gallery"] = _gallery(rows, run)
    log.info("label issues: %d suspected label error(s) among %d training + %d validation images (%s); ranked in %s",
             len(rows), examined["train"], examined["val"], how, run.label_issues)
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
