"""Scoring a model on labelled images: the sets it is scored on (a run's own validation split, ``validation_set``;
a labelled folder, ``folder_set``), the predictions matched to the truth by class name (``score``, ``scored_from``)
and the numbers (``scores``: accuracy, top-5, per-class precision/recall/F1, the confusion matrix). What ``vgg
evaluate`` writes of them is ``vgg_cli.evaluation.evaluate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vgg_cli.data.index import VAL, index_from_manifest
from vgg_cli.data.scan import scan_labelled
from vgg_cli.errors import DataError, NoInputError, VggError
from vgg_cli.inference.ood import stats_for
from vgg_cli.inference.predict import Options, predict_files
from vgg_cli.runs.rundir import RunDir
from vgg_cli.task import SINGLE_LABEL, Task


@dataclass
class EvalSet:
    """Images with their true class names, and where they came from."""
    files: list[str]
    truth: list[str]
    source: str
    missing_classes: list[str] = field(default_factory=list)  # model classes with no images here
    skipped: list[dict] = field(default_factory=list)  # unreadable files with reasons
    run_dir: Path | None = None  # the run whose own validation split this is


def validation_set(run_dir: Path) -> EvalSet:
    """The run's own held-out images (data.json), which it never trained on: its validation split less the leaked
    images (a copy of each is in training, ``vgg_cli.data.leakage``), so the accuracy is the one promotion judges."""

    manifest = RunDir(run_dir).data
    try:
        index = index_from_manifest(RunDir(run_dir).read_manifest())
    except (VggError, ValueError, KeyError) as e:
        raise NoInputError(f"{str(manifest)!r} is missing or unreadable ({e}); pass a labelled folder: "
                           f"vgg evaluate --run {run_dir} DATA_DIR") from None
    files, labels = index.judged_split()
    leaked = len(index.split(VAL)[0]) - len(files)
    if not files and leaked:
        raise NoInputError(f"run {run_dir.name!r} has no validation images without a copy in training (all {leaked} "
                           f"are leaked; see data.json \"duplicates\"); pass a labelled folder: vgg evaluate --run "
                           f"{run_dir} DATA_DIR")
    if not files:
        raise NoInputError(f"run {run_dir.name!r} has no validation images (it trained with data.val_split=0 and no "
                           f"data.val_dir); pass a labelled folder: vgg evaluate --run {run_dir} DATA_DIR")
    truth = [index.classes[i] for i in labels]
    source = f"validation split of run {run_dir.name}" + (f" ({leaked} leaked left out)" if leaked else "")
    return EvalSet(files, truth, source, missing_classes=[c for c in index.classes if c not in set(truth)],
                   run_dir=Path(run_dir))


def check_known_classes(root, folders: list[str], classes: list[str]) -> None:
    """An evaluation folder's class folders (with images) must all be classes of the model."""
    unknown = sorted(c for c in folders if c not in classes)
    if unknown:
        raise DataError(f"evaluation folder {str(root)!r} has class folder(s) {unknown} that the model does not "
                        f"know (its classes: {classes}); evaluate on a folder whose subfolders are among those "
                        f"classes, or move the others out")


def folder_set(folder: str, classes: list[str], image_size: int) -> EvalSet:
    """Every image of a folder with one subfolder per class; class folders matched to ``classes`` by name."""

    root, per_class, skipped = scan_labelled(folder, image_size)
    check_known_classes(root, [c for c, files in per_class.items() if files], classes)
    files = [(f, c) for c in classes for f in per_class.get(c, [])]
    if not files:
        raise DataError(f"evaluation folder {str(root)!r} has no usable images in class folders named like the "
                        f"model's classes ({classes}); put each class's images in its own subfolder")
    missing = [c for c in classes if not per_class.get(c)]
    return EvalSet([f for f, _ in files], [c for _, c in files], f"folder {root}", missing, skipped)


@dataclass
class Scored:
    """A model's predictions on an EvalSet, matched to the truth by class name, and their scores."""
    classes: list[str]  # the model's
    scored: list[tuple]  # (prediction, true class name) of every readable image
    truth: list[int]  # their true class indices
    ranked: list[list[int]]  # their classes ranked by probability
    unreadable: list[dict]  # {"path", "reason"}
    scores: dict  # see ``scores``
    outputs_from: str = "the model on the images"  # or the run's feature cache (``frozen.cached_scores``)
    task: Task = SINGLE_LABEL  # what the answers are (its scores, calibration)

    @property
    def accuracy(self) -> float:
        return self.scores["accuracy"]


def score(model, data: EvalSet, batch_size: int = 32, tta: str = "none", options=None) -> Scored:
    """Predict every image of ``data`` with ``model`` (averaged over ``tta`` variants) and score the readable ones
    (``vgg evaluate`` and promotion). ``options``: ``predict.Options`` (calibration, unknown; logits kept)."""
    from vgg_cli.model.load import class_names_of

    classes = class_names_of(model)
    results = predict_files(model, data.files, len(classes), batch_size, tta, options)
    return scored_from(classes, results, data, task=(options or Options()).task)


def scored_from(classes: list[str], results: list, data: EvalSet, outputs_from: str = "the model on the images",
                task: Task = SINGLE_LABEL) -> Scored:
    """``Scored`` of a prediction of each of ``data``'s files (``predict.Prediction``, in order): the ``task``'s
    scores."""
    index_of = {c: i for i, c in enumerate(classes)}
    scored = [(r, t) for r, t in zip(results, data.truth) if r.error is None]
    unreadable = [{"path": r.path, "reason": r.error} for r in results if r.error is not None]
    if not scored:
        raise DataError(f"none of the {len(results)} images of the {data.source} could be read "
                        f"(e.g. {unreadable[0]['path']}: {unreadable[0]['reason']})")
    truth = [index_of[t] for _, t in scored]
    ranked = [[index_of[label] for label, _ in r.top] for r, _ in scored]
    return Scored(classes, scored, truth, ranked, unreadable, task.scores(truth, ranked, len(classes)),
                  outputs_from, task)


def answering(model, model_file: Path, calibrated: bool = True, min_probability: float | None = None):
    """``predict.Options`` of an evaluation: logits kept, the out-of-distribution statistics of ``model_file``."""

    return Options(calibrated=calibrated, ood=stats_for(model, Path(model_file)), min_probability=min_probability,
                   keep=("logits",))
