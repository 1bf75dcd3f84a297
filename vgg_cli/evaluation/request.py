"""`vgg evaluate` as one request: what was asked (``EvalRequest``), the model and its run, the images (the run's
validation split or a labelled folder), answered from the run's feature cache when that gives the same answers,
then scored and written by ``vgg_cli.evaluation.evaluate``. The command line parses, calls ``evaluate_request``
and prints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vgg_cli.data.scan import class_folders_with_files
from vgg_cli.evaluation.evaluate import evaluate
from vgg_cli.evaluation.frozen import cached_validation
from vgg_cli.evaluation.scoring import EvalSet, answering, check_known_classes, folder_set, validation_set
from vgg_cli.inference.numpy_engine import peek_class_names
from vgg_cli.runs.rundir import RunDir


@dataclass(frozen=True)
class EvalRequest:
    """What ``vgg evaluate`` was asked (its options, by name)."""
    data_dir: str | None = None  # None: the run's own validation split
    out_dir: str | None = None
    batch_size: int = 32
    tta: str = "none"
    gradcam: bool = False
    cam_layer: str | None = None
    min_probability: float | None = None
    uncalibrated: bool = False


def output_folder(request: EvalRequest, run_dir: Path | None) -> Path:
    """--out, else <run>/evaluation/<val or DATA_DIR's name>, else ./evaluation/<name> for a bare model file."""
    if request.out_dir:
        return Path(request.out_dir)
    name = "val" if request.data_dir is None else (Path(os.path.expanduser(request.data_dir)).resolve().name or "data")
    return RunDir(run_dir).evaluation(name) if run_dir else Path("evaluation") / name


def check_before_loading(request: EvalRequest, model_file: Path) -> None:
    """What can be refused before any framework loads: a DATA_DIR class folder the model does not know (the class
    names read from the model file's config)."""
    classes = peek_class_names(model_file)
    if request.data_dir is not None and classes is not None:
        folder = os.path.expanduser(request.data_dir)
        check_known_classes(Path(folder).resolve(), class_folders_with_files(folder), classes)


def evaluate_request(request: EvalRequest, model_file: Path, run_dir: Path | None,
                     warn: Callable[[str], None]) -> dict:
    """Load the model in ``model_file`` (of the run ``run_dir``, or None), score it on the asked images and write
    the report into ``output_folder``; ``warn`` hears about missing classes and skipped files. Returns the report.
    Call it with Keras loaded."""
    from vgg_cli.model.load import class_names_of, image_size_of, load_model

    model = load_model(model_file)
    if request.data_dir is None:
        data = validation_set(run_dir)
    else:
        data = folder_set(os.path.expanduser(request.data_dir), class_names_of(model), image_size_of(model))
    _warn_about(data, warn)
    options = answering(model, model_file, not request.uncalibrated, request.min_probability)
    result = None
    if request.data_dir is None and request.tta == "none" and not request.gradcam:
        result = cached_validation(model, RunDir(run_dir), data, request.batch_size, options)  # the same answers
    return evaluate(model, model_file, data, output_folder(request, run_dir), request.batch_size,
                    request.cam_layer or request.gradcam, RunDir(run_dir) if run_dir else None, tta=request.tta,
                    options=options, result=result)


def _warn_about(data: EvalSet, warn: Callable[[str], None]) -> None:
    if data.missing_classes:
        warn(f"no images of class(es) {data.missing_classes} in the {data.source}")
    for s in data.skipped:
        warn(f"skipped {s['path']}: {s['reason']}")
