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


def _field(types: tuple[type, ...], doc: str, default: Any = None, factory=None):
    """A summary.json key: the JSON types it may have (null always allowed), what it says, its default."""
    meta = {"types": types, "doc": doc}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass(slots=True)
class Summary:
    """One run's summary.json, field by field. Training fills the training fields (``vgg_cli.training.summarise``),
    finishing adds ``calibration`` and ``promotion`` (``vgg_cli.job.finish``)."""
    status: RunStatus | None = _field((str,), "how far the run got (RunStatus)")
    stopped_by: str | None = _field((str,), "the signal that interrupted it")
    epochs_run: int | None = _field((int,), "epochs trained, over every session")
    epochs_planned: int | None = _field((int,), "epochs of every phase")
    monitor: str | None = _field((str,), "the metric that picks the best epoch")
    best: dict | None = _field((dict,), "the best epoch's metrics row")
    final: dict | None = _field((dict,), "the last epoch's metrics row")
    health: dict = _field((dict,), "the health checks' record (vgg_cli.training.health)", factory=dict)
    classes: list = _field((list,), "class names in index order", factory=list)
    counts: dict | None = _field((dict,), "images per class and split")
    images: dict = _field((dict,), '{"train", "val", "skipped"} counts', factory=dict)
    fingerprint: str | None = _field((str,), "the dataset's fingerprint (--if-changed)")
    config_digest: str | None = _field((str,), "what makes two trainings the same job (--if-changed)")
    weights: str | None = _field((str,), "where the starting weights came from")
    params: dict | None = _field((dict,), "{total, trainable} parameter counts")
    started: str | None = _field((str,), "when the run started (ISO time)")
    finished: str | None = _field((str,), "when its last session ended (ISO time)")
    resumed: list = _field((list,), "each resume: when, after which epoch", factory=list)
    timings: dict = _field((dict,), "seconds of each part, images per second, peak memory", factory=dict)
    device: dict | None = _field((dict,), "backend, devices, precision, distribution")
    versions: dict | None = _field((dict,), "versions of vgg and its frameworks")
    drift: dict | None = _field((dict,), "tonight's new images against the previous run's (None: not tested)")
    input: dict | None = _field((dict,), "what fed training: cached features or images, and why")
    phases: list | None = _field((list,), "each phase: frozen blocks, rate, epochs, input")
    class_weight: dict | None = _field((dict,), "train.class_weight resolved, per class name")
    run: str | None = _field((str,), "the run directory's name")
    set_aside: list | None = _field((list,), "unfinished runs this night set aside")
    calibration: dict | None = _field((dict,), "temperature and out-of-distribution statistics")
    promotion: dict | None = _field((dict,), "the promotion decision and whether it was applied")
    task: str | None = _field((str,), "what an image's answer is (vgg_cli.task; None: single_label, before the key)")
    schema: int = _field((int,), "this file's schema version (1: none written)", default=1)
    unknown: dict = field(default_factory=dict, repr=False)  # keys this vgg does not know: written back as read

    @classmethod
    def parse(cls, value: Any, path: Path | str = "summary.json") -> Summary:
        """Read one summary.json object; a damaged file is a one-line error naming it."""
        if not isinstance(value, dict):
            raise DataError(f"{path} is not a JSON object; the run is damaged")
        known = {f.name: f for f in fields(cls) if f.name != "unknown"}
        for key, f in known.items():
            v, types = value.get(key), f.metadata["types"]
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
    def needs_finishing(self) -> bool:
        """Trained all its epochs but was stopped before its promotion was decided and carried out."""
        if not self.trained_to_end:
            return False
        p = self.promotion
        return p is None or bool(p.get("pending")) or p.get("applied") is False

    @property
    def health_status(self) -> str | None:
        return self.health.get("status")

    @property
    def drift_flagged(self) -> bool:
        return bool((self.drift or {}).get("flagged"))
