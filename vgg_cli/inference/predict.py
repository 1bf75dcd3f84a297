"""Labelling images with a trained model; reads only the run directory (or a .keras file)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from vgg_cli.data.images import BadImage, is_image_name, load_image
from vgg_cli.data.pipeline import decode_workers, prefetch_batches
from vgg_cli.errors import NoInputError
from vgg_cli.inference.forward import Forward
from vgg_cli.inference.numpy_engine import NumpyModel
from vgg_cli.progress import Progress
from vgg_cli.runs.rundir import RunDir
from vgg_cli.task import SINGLE_LABEL, Task

UNKNOWN = "unknown"  # the answer for an image beyond the run's out-of-distribution threshold or too unsure


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    ood_score: float | None = None  # higher = less like the training images (None: the run has no statistics)
    unknown: str | None = None  # why the answer is "unknown": "ood_score" or "min_probability"; None: a class
    logits: np.ndarray | None = field(default=None, repr=False)  # kept for evaluation (Options.keep)
    features: np.ndarray | None = field(default=None, repr=False)

    @property
    def answer(self) -> str:
        return UNKNOWN if self.unknown else self.top[0][0]

    def to_dict(self) -> dict:
        d: dict = {"path": self.path}
        if self.error is None:
            d["answer"], d["probability"] = self.answer, self.top[0][1]  # a class of top_k, or "unknown"
            d["top_k"] = [{"label": lab, "probability": p} for lab, p in self.top]
            d.update(predicted=self.top[0][0], unknown=self.unknown is not None, unknown_reason=self.unknown,
                     ood_score=self.ood_score)
        else:
            d["error"] = self.error
        return d


@dataclass
class Options:
    """How predictions are answered: ``calibrated`` probabilities (the model's temperature; False: temperature
    1), ``ood`` (an ``OODStats``: score every image, ``unknown`` beyond its threshold), ``min_probability``
    (``unknown`` below it), ``keep``: "logits" and/or "features" kept on each Prediction; ``task``: what an answer
    is (``vgg_cli.task``: the activation on logits, the ranking of a row)."""
    calibrated: bool = True
    ood: object | None = None
    min_probability: float | None = None
    keep: tuple[str, ...] = ()
    task: Task = SINGLE_LABEL

    @property
    def needs_features(self) -> bool:
        """Whether a forward pass must give the head's penultimate features (kept, or the score needs them)."""
        return "features" in self.keep or bool(self.ood is not None and self.ood.needs_features)

    def judge(self, p: Prediction) -> Prediction:
        if self.ood is not None and p.ood_score is not None and p.ood_score > self.ood.threshold:
            p.unknown = "ood_score"
        elif self.min_probability is not None and p.top[0][1] < self.min_probability:
            p.unknown = "min_probability"
        return p


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files as given; folders walked recursively (sorted) for image files; a missing path stays, to be reported."""
    out: list[str] = []
    for item in inputs:
        p = Path(os.path.expanduser(item))
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                out += [str(Path(dirpath) / n) for n in sorted(filenames) if is_image_name(n)]
        else:
            out.append(str(p))
    return out


NOT_FOUND = "not found"


def load_or_reason(path: str, size: int, resize: str = "squash") -> np.ndarray | str:
    """The decoded image, or why it cannot be read (what a Prediction's error says)."""
    if not os.path.lexists(path):
        return NOT_FOUND
    try:
        return load_image(path, size, resize)
    except BadImage as e:
        return str(e)


# Test-time augmentation: each image is also predicted in these variants and the probabilities are averaged.
TTA = ("none", "flip", "shift", "flip+shift")
SHIFT = 0.0625  # of the image side: the four shifted copies of "shift" (up, down, left, right)


def tta_views(batch: np.ndarray, mode: str) -> list[np.ndarray]:
    """The variants of a uint8 batch (N, S, S, 3) that ``mode`` averages over; the batch itself first. Shifted
    copies repeat the edge pixels into the space they leave (no black borders the model never saw)."""
    if mode not in TTA:
        raise ValueError(f"tta must be one of {', '.join(TTA)}, got {mode!r}")
    views = [batch]
    if "flip" in mode:
        views.append(batch[:, :, ::-1])
    if "shift" in mode:
        d = max(1, round(batch.shape[1] * SHIFT))
        padded = np.pad(batch, ((0, 0), (d, d), (d, d), (0, 0)), mode="edge")
        side = batch.shape[1]
        for dy, dx in ((0, d), (2 * d, d), (d, 0), (d, 2 * d)):
            views.append(padded[:, dy:dy + side, dx:dx + side])
    return views


def predict_files(model, files: list[str], top_k: int, batch_size: int, tta: str = "none",
                  options: Options | None = None) -> list[Prediction]:
    """Top-k labels of ``files``, decoded at the model's image size and in its resize mode (what it was trained
    with); the next batch is decoded (in parallel threads) while this one runs. ``tta``: average the probabilities
    over flipped and/or shifted copies (``TTA``). ``options``: calibration, the out-of-distribution score and
    ``unknown`` (``Options``)."""

    options = options or Options()
    forward, classes, size, resize = _engine(model, options.needs_features, options.calibrated, options.task)
    k = max(1, min(top_k, len(classes)))
    results: list[Prediction] = []
    few = len(files) <= batch_size  # one batch: no bar to flicker on a terminal
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool, \
            Progress(len(files), "predicting", tty=False if few else None) as progress:
        for start, loaded in prefetch_batches(files, lambda f: load_or_reason(f, size, resize), batch_size, pool):
            chunk = files[start:start + batch_size]
            good = [i for i, x in enumerate(loaded) if not isinstance(x, str)]
            out = forward(tta_views(np.stack([loaded[i] for i in good]), tta)) if good else {}
            answered = iter(answer_rows([chunk[i] for i in good], out, classes, k, options))
            good_rows = set(good)
            results += [next(answered) if i in good_rows else Prediction(path, error=loaded[i])
                        for i, path in enumerate(chunk)]
            progress.update(len(chunk))
    return results


def answer_rows(paths: list[str], out: dict, classes: list[str], top_k: int, options: Options) -> list[Prediction]:
    """A Prediction of each of ``paths`` from a forward pass's arrays ``out`` (row n is ``paths[n]``; see
    ``forward.Forward``): the ``top_k`` classes, the out-of-distribution score, ``unknown`` and the kept arrays."""
    if not paths:
        return []
    ood = options.ood
    scores = ood.score(out.get("logits"), out.get("features")) if ood is not None else None
    answers = []
    ranked = options.task.ranked(out["probabilities"], top_k)
    for n, path in enumerate(paths):
        p = out["probabilities"][n]
        r = Prediction(path, [(classes[j], float(p[j])) for j in ranked[n]],
                       ood_score=None if scores is None else float(scores[n]))
        for name in options.keep:
            setattr(r, name, out.get(name, [None] * len(paths))[n])
        answers.append(options.judge(r))
    return answers


def _engine(model, features: bool, calibrated: bool, task: Task = SINGLE_LABEL) -> tuple:
    """(forward: views -> arrays, class names, image size, resize mode) of a Keras model or a
    ``numpy_engine.NumpyModel``."""

    if isinstance(model, NumpyModel):
        return (lambda views: model.forward(views, features, calibrated), model.class_names, model.image_size,
                model.resize)
    from vgg_cli.model.load import class_names_of, image_size_of, resize_of

    return (Forward(model, features=features, calibrated=calibrated, activation=task.probabilities),
            class_names_of(model), image_size_of(model),
            resize_of(model))


def format_results(results: list[Prediction], fmt: str, top_k: int, cams: dict | None = None) -> str:
    """The table, CSV or JSON lines; ``cams`` ({path: Grad-CAM files}) adds a ``gradcam`` field to JSON. CSV:
    path, label_i/probability_i (the ranked classes), error, then answer (the class, or unknown), unknown
    (its reason, empty for a class) and ood_score (empty when the run has none)."""
    if fmt == "json":
        return "".join(_json_line({**r.to_dict(), **({"gradcam": cams[r.path]} if cams and r.path in cams else {})})
                       for r in results)
    if fmt == "csv":
        k = max((len(r.top) for r in results), default=1)
        head = (["path"] + [c for i in range(1, k + 1) for c in (f"label_{i}", f"probability_{i}")] +
                ["error", "answer", "unknown", "ood_score"])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        for r in results:
            cells = [x for lab, p in r.top for x in (lab, f"{p:.6f}")]
            tail = ["", "", ""] if r.error is not None else [r.answer, r.unknown or "", _score(r.ood_score)]
            w.writerow([r.path] + cells + [""] * (2 * k - len(cells)) + [r.error or ""] + tail)
        return buf.getvalue()
    width = min(max((len(r.path) for r in results), default=4), 60)
    lines = [f"{'path':<{width}}  prediction"]
    for r in results:
        shown = r.path if len(r.path) <= width else "..." + r.path[-(width - 3):]
        if r.error is not None:
            lines.append(f"{shown:<{width}}  ERROR: {r.error}")
            continue
        guess = "  ".join(f"{lab} {p:.3f}" for lab, p in r.top)
        score = "" if r.ood_score is None else f"  (ood {r.ood_score:.4g})"
        if r.unknown:
            why = "beyond the run's threshold" if r.unknown == "ood_score" else "below --min-probability"
            guess = f"{UNKNOWN} ({why}; best guess {guess})"
        lines.append(f"{shown:<{width}}  {guess}{score}")
    return "\n".join(lines) + "\n"


def _json_line(row: dict) -> str:
    """One JSON line, UTF-8 text: a file name that is not UTF-8 keeps each such byte as Python's surrogateescape
    writes it, ``\\udcXX`` (``os.fsencode(row["path"])`` gives the name's bytes back), never U+FFFD."""
    text = json.dumps(row, ensure_ascii=False)
    return re.sub("[\udc80-\udcff]", lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def _score(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def resolve_model_file(run: str | None, model_file: str | None, runs) -> Path:
    """The model file of ``--model``, else of the run ``--run`` names in ``runs`` (a ``RunsRoot``)."""

    if model_file is not None:
        p = Path(os.path.expanduser(model_file))
        if not p.is_file():
            raise NoInputError(f"--model {model_file!r} not found; pass a .keras file from a vgg run")
        return p
    return RunDir(runs.resolve(run)).model_file()
