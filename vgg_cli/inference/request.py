"""`vgg predict` as one request: what was asked (``Request``), the decisions made before any framework loads (the
model file, the engine: ``open_request``), then the answers (``Opened.answer``: the model loaded, every image
predicted, Grad-CAM, the timings). The command line parses, opens, answers and prints."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from vgg_cli.errors import NoInputError, UsageError
from vgg_cli.inference.gradcam import cam_files
from vgg_cli.inference.numpy_engine import Declined, choose
from vgg_cli.inference.ood import stats_for
from vgg_cli.inference.predict import Options, Prediction, expand_inputs, predict_files, resolve_model_file

log = logging.getLogger("vgg")
VIEWS = {"none": 1, "flip": 2, "shift": 5, "flip+shift": 6}  # model calls per image of each --tta


@dataclass(frozen=True)
class Request:
    """What ``vgg predict`` was asked (its options, by name)."""
    inputs: tuple[str, ...]
    run: str | None = None
    model_file: str | None = None
    top_k: int = 1
    batch_size: int = 32
    tta: str = "none"
    cam_dir: str | None = None
    cam_class: str | None = None
    cam_layer: str | None = None
    min_probability: float | None = None
    uncalibrated: bool = False
    engine: str = "auto"


@dataclass
class Answered:
    """The predictions, the Grad-CAM files by image, and where the time went (seconds)."""
    results: list[Prediction]
    cams: dict
    timings: dict = field(default_factory=dict)

    @property
    def failed(self) -> list[Prediction]:
        return [r for r in self.results if r.error is not None]


@dataclass
class Opened:
    """A request with its model file and engine chosen (``fast``: the NumPy engine's model, or None: Keras)."""
    request: Request
    files: list[str]
    path: Path
    fast: object | None
    why: str
    opened_at: float  # when the engine was chosen (the frameworks load after it)
    numpy_load: float = 0.0  # seconds the NumPy engine's model took to load while it was chosen

    @property
    def needs_keras(self) -> bool:
        return self.fast is None

    def answer(self) -> Answered:
        """Load the model (Keras unless the NumPy engine was chosen) and answer every image. Call it with the
        framework loaded when ``needs_keras``."""
        r, t0 = self.request, time.perf_counter()
        model = self.fast if self.fast is not None else _load_keras(self.path)
        t1 = time.perf_counter()
        options = Options(calibrated=not r.uncalibrated, ood=stats_for(model, self.path, self.fast and self.fast.digest),
                          min_probability=r.min_probability)
        results = predict_files(model, self.files, r.top_k, r.batch_size, r.tta, options)
        t2 = time.perf_counter()
        return Answered(results, _gradcams(model, results, r), {"import": t0 - self.opened_at,
                                                                "load": t1 - t0 + self.numpy_load, "predict": t2 - t1})


def open_request(request: Request, runs) -> Opened:
    """The files (folders walked), the model file (--run, --model, else production, else latest) and the engine,
    decided before TensorFlow is imported: ``--engine numpy`` on a model or option it cannot serve is a usage error
    (one line). ``runs``: the runs folder (``vgg_cli.runs.root.RunsRoot``)."""
    files = expand_inputs(request.inputs)
    if not files:
        raise NoInputError(f"no image files found in {', '.join(request.inputs)}; pass image files or folders of "
                           f"images")
    path = resolve_model_file(request.run, request.model_file, runs)
    t0 = time.perf_counter()
    if request.cam_dir is not None:
        if request.engine == "numpy":
            raise UsageError("--engine numpy cannot compute --gradcam (it needs gradients): use --engine auto or "
                             "keras")
        fast, why = None, "--gradcam needs Keras"
    else:
        try:
            fast, why = choose(request.engine, path, len(files), VIEWS[request.tta])
        except Declined as e:
            raise UsageError(f"--engine numpy cannot run {path}: {e}; use --engine auto or keras") from None
    log.debug("engine: %s (%s)", "keras" if fast is None else "numpy", why)
    # (the NumPy engine's model is loaded when it is chosen: its load counts as the model's, not the import's)
    return Opened(request, files, path, fast, why, time.perf_counter(), time.perf_counter() - t0)


def _load_keras(path):
    from vgg_cli.model.load import load_model

    return load_model(path)


def _gradcams(model, results: list[Prediction], r: Request) -> dict:
    """Grad-CAM files of each answered image (--gradcam DIR), or {}."""
    if r.cam_dir is None:
        return {}
    cams = cam_files(model, results, Path(os.path.expanduser(r.cam_dir)), r.cam_class, r.cam_layer, r.batch_size)
    if r.tta != "none":  # the heatmap explains the one image: its probability is that image's, not the average
        for entry in cams.values():
            entry["probability_is"] = f"of the image alone (without --tta {r.tta}, which averages copies)"
    return cams
