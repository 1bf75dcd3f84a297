"""summary.json, the record every later command reads (runs, promote, report, resume, --if-changed): its statuses,
its schema version, and ``Summary``, a type with one field per key (no free keys: a writer sets a declared field).

Schema versions: 1 = every summary written before the field existed (vgg up to HEAD e541985); 2 = the same fields
plus ``"schema": 2`` (up to HEAD 2e99dd1), with optional fields added on the way (``drift``, ``calibration``,
``input``, ``phases``, ...); 3 = every field below, always written (null where a run has no value). Every
version reads: a missing field is its default, a key this vgg does not know is kept as it was and written back
(``unknown``), never read. A field of the wrong type is a one-line ``DataError`` naming the file, never a crash
further on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from vgg_cli.errors import DataError

SCHEMA = 3


class RunStatus(str, Enum):
    """summary.json ``status``: how far a run got."""
    FINISHED = "finished"  # trained every planned epoch
    EARLY_STOPPED = "early_stopped"  # trained to its end, stopped early by train.early_stopping
    INTERRUPTED = "interrupted"  # stopped by a signal; vgg train --resume continues it
    DIVERGED = "diverged"  # stopped by non-finite numbers (vgg_cli.training.health); never resumed or promoted

    @property
    def trained_to_end(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.EARLY_STOPPED)


class Outcome(str, Enum):
    """What one ``vgg train`` did (``--json``'s "status")."""
    TRAINED = "trained"
    NOTHING_TO_DO = "nothing_to_do"
    INTERRUPTED = "interrupted"
    WORKER_DONE = "worker_done"  # a multi-worker job's other worker finished; the chief wrote the run


# summary.json's promotion while it is undecided: training writes it, vgg_cli.job.finish decides and applies it
PENDING = {"pending": True, "promoted": False, "applied": False}


# the JSON type a field holds, by the first name of its annotation (null is allowed everywhere)
_JSON = {"RunStatus": (str,), "str": (str,), "int": (int,), "dict": (dict,), "list": (list,)}


@dataclass(slots=True)
class Summary:
    """One run's summary.json, field by field. Training fills the training fields (``vgg_cli.training.summarise``),
    finishing adds ``calibration`` and ``promotion`` (``vgg_cli.job.finish``)."""
    # how far the run got
    status: RunStatus | None = None  # finished, early_stopped, interrupted, diverged
    stopped_by: str | None = None  # the signal that interrupted it
    epochs_run: int | None = None  # epochs trained, over every session
    epochs_planned: int | None = None  # epochs of every phase
    monitor: str | None = None  # the metric that picks the best epoch
    # its numbers
    best: dict | None = None  # the best epoch's metrics row
    final: dict | None = None  # the last epoch's metrics row
    health: dict = field(default_factory=dict)  # the health checks' record (vgg_cli.training.health)
    params: dict | None = None  # {total, trainable} parameter counts
    # the data it trained on
    classes: list = field(default_factory=list)  # class names in index order
    counts: dict | None = None  # images per class and split
    images: dict = field(default_factory=dict)  # {"train", "val", "skipped"} counts
    fingerprint: str | None = None  # the dataset's fingerprint (--if-changed)
    # how it was set up
    config_digest: str | None = None  # what makes two trainings the same job (--if-changed)
    weights: str | None = None  # where the starting weights came from
    task: str | None = None  # what an image's answer is (vgg_cli.task; None: single_label, before the key)
    device: dict | None = None  # backend, devices, precision, distribution
    versions: dict | None = None  # versions of vgg and its frameworks
    # when
    started: str | None = None  # when the run started (ISO time)
    finished: str | None = None  # when its last session ended (ISO time)
    resumed: list = field(default_factory=list)  # each resume: when, after which epoch
    timings: dict = field(default_factory=dict)  # seconds of each part, images per second, peak memory
    # what fed it, and the night around it
    input: dict | None = None  # what fed training: cached features or images, and why
    phases: list | None = None  # each phase: frozen blocks, rate, epochs, input
    class_weight: dict | None = None  # train.class_weight resolved, per class name
    drift: dict | None = None  # tonight's new images against the previous run's (None: not tested)
    set_aside: list | None = None  # unfinished runs this night set aside
    run: str | None = None  # the run directory's name
    # its end
    calibration: dict | None = None  # temperature and out-of-distribution statistics
    promotion: dict | None = None  # the promotion decision and whether it was applied
    schema: int = 1  # this file's schema version (1: none written)
    unknown: dict = field(default_factory=dict, repr=False)  # keys this vgg does not know: written back as read

    @classmethod
    def parse(cls, value: Any, path: Path | str = "summary.json") -> Summary:
        """Read one summary.json object; a damaged file is a one-line error naming it."""
        if not isinstance(value, dict):
            raise DataError(f"{path} is not a JSON object; the run is damaged")
        known = {f.name: f for f in fields(cls) if f.name != "unknown"}
        for key, f in known.items():
            v, types = value.get(key), _JSON[str(f.type).split(" ")[0]]
            if v is not None and (not isinstance(v, types) or isinstance(v, bool) and bool not in types):
                raise DataError(f"{path}: {key!r} is {type(v).__name__} {str(v)[:40]!r}, not "
                                f"{' or '.join(t.__name__ for t in types)}; the run is damaged")
        status = value.get("status")
        if status is not None and status not in {s.value for s in RunStatus}:
            raise DataError(f"{path}: unknown status {str(status)[:40]!r}; the run is damaged (or written by a "
                            f"newer vgg)")
        given = {k: v for k, v in value.items() if k in known and v is not None}
        if status is not None:
            given["status"] = RunStatus(status)
        return cls(**given, unknown={k: v for k, v in value.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        out = {**self.unknown}
        for f in fields(self):
            if f.name != "unknown":
                out[f.name] = getattr(self, f.name)
        out["status"] = self.status.value if self.status is not None else None
        out["schema"] = SCHEMA
        return out

    # ------------------------------------------------------------------------------------------ derived views
    @property
    def empty(self) -> bool:
        """No summary was read (a run that has not written one): every field at its default."""
        return self == Summary()

    @property
    def trained_to_end(self) -> bool:
        return self.status is not None and self.status.trained_to_end

    @property
    def best_value(self) -> float | None:
        """The best epoch's value of the monitored metric."""
        best, monitor = self.best or {}, self.monitor
        v = best.get(monitor) if monitor else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def images_total(self) -> int | None:
        images = self.images
        return images.get("train", 0) + images.get("val", 0) if images else None

    @property
    def promoted(self) -> bool:
        return bool((self.promotion or {}).get("promoted"))

    @property
    def undecided(self) -> bool:
        """Its promotion is not decided yet (pending, or no record at all)."""
        return self.promotion is None or bool(self.promotion.get("pending"))

    @property
    def needs_finishing(self) -> bool:
        """Trained all its epochs but was stopped before its promotion was decided and carried out."""
        if not self.trained_to_end:
            return False
        return self.undecided or self.promotion.get("applied") is False

    @property
    def health_status(self) -> str | None:
        return self.health.get("status")

    @property
    def drift_flagged(self) -> bool:
        return bool((self.drift or {}).get("flagged"))
