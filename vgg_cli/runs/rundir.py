"""One run directory as a typed object: the name of every file a run writes, and readers that return them typed.

The bottom of the run-directory side (beside ``fsio``): it knows the format of a run, nothing of training,
promotion or prediction, so any layer may read a run through it. Every other module names a run's files through
``RunDir``; the literal file names live here only.

Readers come in two kinds, by what a missing or damaged file means to the caller:

- ``read_*`` raise a one-line user error (``NoInputError`` 66 when missing, ``DataError`` 65 when damaged);
- ``summary_or_none`` / ``info_or_none`` return None: a run that has not written its summary yet is normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vgg_cli.errors import DataError, NoInputError, VggError
from vgg_cli.fsio import read_json, write_json
from vgg_cli.runs.summary import Summary


def ood_stats_path(model_file: Path) -> Path:
    """``<model>.ood.npz`` beside a model file: its out-of-distribution statistics and threshold
    (``vgg_cli.inference.ood``), written by the run's calibration for ``best.keras``."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.stem + ".ood.npz")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def classes(self) -> Path:
        return self.root / "classes.json"

    @property
    def data(self) -> Path:
        """The manifest: every file of the dataset, its split and class, and what was skipped."""
        return self.root / "data.json"

    @property
    def info(self) -> Path:
        """run.json: start time, weights, config digest, resumes."""
        return self.root / "run.json"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def best(self) -> Path:
        return self.model_dir / "best.keras"

    @property
    def last(self) -> Path:
        return self.model_dir / "last.keras"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def state(self) -> Path:
        """The commit point of training progress: the last completed epoch and its checkpoint."""
        return self.root / "state.json"

    @property
    def checkpoints(self) -> Path:
        return self.model_dir / "checkpoints"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch-{epoch:04d}.keras"

    def evaluation(self, name: str) -> Path:
        """Where ``vgg evaluate`` writes its report on ``name`` (``val`` or a folder's name): an ``EvaluationDir``."""
        return self.root / "evaluation" / name

    @property
    def set_aside(self) -> Path:
        """set_aside.json: this unfinished run cannot be resumed (why, when); vgg no longer tries."""
        return self.root / "set_aside.json"

    @property
    def report(self) -> Path:
        """report.html: the run, its curves, its validation evaluation."""
        return self.root / "report.html"

    @property
    def label_issues(self) -> Path:
        """label_issues.csv: suspected label errors, most suspect first (``vgg_cli.evaluation.suspects``)."""
        return self.root / "label_issues.csv"

    @property
    def label_issues_png(self) -> Path:
        """label_issues.png: a gallery of the most suspect images."""
        return self.root / "label_issues.png"

    # ------------------------------------------------------------------------------------------ what it is

    def is_run(self) -> bool:
        """A real run folder (not a pointer such as ``latest``, not hidden) that got as far as its config."""
        return (self.root.is_dir() and not self.root.is_symlink() and not self.name.startswith(".")
                and self.config.is_file())

    def order(self) -> tuple[int, float]:
        """Orders runs oldest to newest: by the sequence number ``RunsRoot.new_run`` gave the run (in run.json),
        which no clock can turn back; runs from before it (no number) come first, by when config.yaml was written."""
        info = self.info_or_none() or {}
        seq = info.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            return (1, float(seq))
        try:
            return (0, self.config.stat().st_mtime)
        except OSError:
            return (0, 0.0)

    def is_complete(self) -> bool:
        """Got past its creation: config.yaml, data.json and run.json are all written (a run killed in between
        is half-made: nothing to resume)."""
        return self.config.is_file() and self.data.is_file() and self.info.is_file()

    def model_file(self) -> Path:
        """The model a finished (or interrupted) run offers: best.keras, else last.keras."""
        for candidate in (self.best, self.last):
            if candidate.is_file():
                return candidate
        raise NoInputError(f"run directory {str(self.root)!r} has no model/best.keras or model/last.keras; "
                           f"pass a finished run with --run or a model file with --model")

    # ------------------------------------------------------------------------------------------ readers

    def read_classes(self) -> list[str]:
        classes = read_json(self.classes, "run classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{self.classes} is not a list of class names; the run is damaged")
        return classes

    def read_manifest(self) -> dict[str, Any]:
        return _object(read_json(self.data, "run manifest"), self.data)

    def read_summary(self) -> Summary:
        return Summary.parse(read_json(self.summary, "run summary"), self.summary)

    def write_summary(self, summary: Summary) -> None:
        """summary.json, atomically, stamped with the schema version (``vgg_cli.runs.summary``)."""
        write_json(self.summary, summary.to_json())

    def read_info(self) -> dict[str, Any]:
        return _object(read_json(self.info, "run info"), self.info)

    def summary_or_none(self) -> Summary | None:
        """summary.json, or None when the run has not written one yet or it is damaged."""
        return _or_none(self.read_summary)

    def info_or_none(self) -> dict[str, Any] | None:
        return _or_none(self.read_info)


@dataclass(frozen=True)
class EvaluationDir:
    """The files of one ``vgg evaluate`` report (``<run>/evaluation/<name>`` or ``--out``)."""
    root: Path

    @property
    def set_aside(self) -> Path:
        """set_aside.json: this unfinished run cannot be resumed (why, when); vgg no longer tries."""
        return self.root / "set_aside.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def files(self) -> dict[str, Path]:
        """Every file of the report but report.json/report.html, by the key report.json's "files" lists it under."""
        names = {"per_class": "per_class.csv", "confusion_csv": "confusion_matrix.csv",
                 "confusion_png": "confusion_matrix.png",
                 "confusion_normalised_png": "confusion_matrix_normalised.png", "misclassified": "misclassified.csv",
                 "misclassified_png": "misclassified.png", "correct_png": "correct.png",
                 "reliability_png": "reliability.png", "coverage_png": "coverage.png"}
        return {key: self.root / name for key, name in names.items()}


def _object(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a JSON object; the run is damaged")
    return value


def _or_none(reader) -> dict[str, Any] | None:
    try:
        return reader()
    except VggError:
        return None


def iter_runs(runs_dir: Path) -> Iterator[RunDir]:
    """Every run in a runs directory, by name (pointers, hidden folders and stray folders left out)."""
    if not runs_dir.is_dir():
        return
    for d in sorted(runs_dir.iterdir()):
        run = RunDir(d)
        if run.is_run():
            yield run
