"""summary.json, the record every later command reads (runs, promote, report, resume, --if-changed): its statuses,
its schema version, and one typed reader and writer. Training fills it (``vgg_cli.training.summary``), finishing
adds the promotion (``vgg_cli.promotion.finish``); everything else reads it through ``Summary``.

Schema versions: 1 = every summary written before the field existed (vgg up to HEAD e541985; read as is);
2 = the same fields plus ``"schema": 2``. Fields added since, optional in schema 2 (older summaries lack them and
read as before): ``"drift"`` (tonight's new images against the previous run's training images,
``vgg_cli.data.drift``; None when missing) and, in ``promotion.class_change``, the comparison on the classes both
models know (``shared``, ``compared_on``, ``new_classes_accuracy``). A reader tolerates fields it does not know and fields that are missing;
a field of the wrong type is a one-line ``DataError`` naming the file, never a crash further on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from vgg_cli.errors import DataError

SCHEMA = 2


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


# summary.json's promotion while it is undecided: training writes it, vgg_cli.promotion.finish decides and applies it
PENDING = {"pending": True, "promoted": False, "applied": False}

# field -> the JSON types it may have (None allowed everywhere: older runs lack fields)
_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,), "monitor": (str,), "best": (dict,), "final": (dict,), "health": (dict,), "classes": (list,),
    "images": (dict,), "promotion": (dict,), "fingerprint": (str,), "config_digest": (str,), "started": (str,),
    "finished": (str,), "epochs_run": (int,), "epochs_planned": (int,), "timings": (dict,), "device": (dict,),
    "weights": (str,), "resumed": (list,), "run": (str,), "schema": (int,), "drift": (dict,),
}


def _stored(key: str, doc: str) -> property:
    """A field read as stored (its type was checked by ``Summary.parse``); None when missing."""
    return property(lambda self: self.data.get(key), doc=doc)


@dataclass
class Summary:
    """One run's summary.json. ``data`` is the JSON object itself (what is written back); the properties are the
    typed view every reader uses."""
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, path: Path | str = "summary.json") -> Summary:
        """Check the types of the fields vgg reads; a damaged file is a one-line error naming it."""
        if not isinstance(value, dict):
            raise DataError(f"{path} is not a JSON object; the run is damaged")
        for key, types in _TYPES.items():
            v = value.get(key)
            if v is not None and (not isinstance(v, types) or isinstance(v, bool) and bool not in types):
                raise DataError(f"{path}: {key!r} is {type(v).__name__} {str(v)[:40]!r}, not "
                                f"{' or '.join(t.__name__ for t in types)}; the run is damaged")
        status = value.get("status")
        if status is not None and status not in {s.value for s in RunStatus}:
            raise DataError(f"{path}: unknown status {str(status)[:40]!r}; the run is damaged (or written by a "
                            f"newer vgg)")
        return cls(value)

    def to_json(self) -> dict[str, Any]:
        return {**self.data, "schema": SCHEMA}

    # ------------------------------------------------------------------------------------------ typed view
    monitor = _stored("monitor", "the metric that picks the best epoch")
    best = _stored("best", "the best epoch's metrics row")
    fingerprint = _stored("fingerprint", "the dataset's fingerprint (--if-changed)")
    config_digest = _stored("config_digest", "what makes two trainings the same job (--if-changed)")
    started = _stored("started", "when the run started (ISO time)")

    @property
    def status(self) -> RunStatus | None:
        s = self.data.get("status")
        return RunStatus(s) if s is not None else None

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
    def classes(self) -> list[str]:
        return list(self.data.get("classes") or [])

    @property
    def images(self) -> dict[str, int]:
        """{"train", "val", "skipped"} counts; empty when unknown."""
        return {k: int(v) for k, v in (self.data.get("images") or {}).items() if isinstance(v, (int, float))}

    @property
    def images_total(self) -> int | None:
        images = self.images
        return images.get("train", 0) + images.get("val", 0) if images else None

    @property
    def promotion(self) -> dict | None:
        return self.data.get("promotion")

    @promotion.setter
    def promotion(self, record: dict | None) -> None:
        self.data["promotion"] = record

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
    def health(self) -> dict:
        return dict(self.data.get("health") or {})

    @property
    def health_status(self) -> str | None:
        return self.health.get("status")

    @property
    def drift(self) -> dict | None:
        """Tonight's new images against the previous run's training images: {"tested", "flagged", "p", ...};
        None in runs from before the check."""
        return self.data.get("drift")

    @property
    def drift_flagged(self) -> bool:
        return bool((self.drift or {}).get("flagged"))

    @property
    def schema(self) -> int:
        return int(self.data.get("schema") or 1)

    def get(self, key: str, default: Any = None) -> Any:
        """A field the typed view does not cover (timings, device, counts...), as stored."""
        return self.data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
