"""A scanned dataset: its files (``FileEntry``) and the index a run records in data.json and reads back
(``DatasetIndex``: classes, splits, the manifest and the fingerprint). ``vgg_cli.data.scan`` makes one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRAIN, VAL = "train", "val"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to its source root, POSIX separators
    label: int
    split: str  # train | val
    source: str  # train_dir | val_dir
    size: int
    sha1: str


@dataclass
class DatasetIndex:
    train_dir: str
    val_dir: str | None
    val_split: float
    image_size: int
    classes: list[str]
    files: list[FileEntry]
    skipped: list[dict[str, str]] = field(default_factory=list)
    excluded_classes: list[dict[str, str]] = field(default_factory=list)
    ignored_files: int = 0
    dims: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (source, path) -> (w, h)
    duplicates: dict = field(default_factory=dict)  # the record of ``leakage.record``; {} from older manifests

    def root_of(self, entry: FileEntry) -> Path:
        return Path(self.val_dir if entry.source == "val_dir" else self.train_dir)

    def split(self, split: str) -> tuple[list[str], list[int]]:
        """Absolute paths and labels of one split, in index order."""
        chosen = [e for e in self.files if e.split == split]
        return [str(self.root_of(e) / e.path) for e in chosen], [e.label for e in chosen]

    def judged_split(self) -> tuple[list[str], list[int]]:
        """The validation split less its leaked images (``leakage``): what promotion is judged on, in order."""
        leaked = set(self.duplicates.get("leaked") or [])
        chosen = [e for e in self.files if e.split == VAL and entry_name(e) not in leaked]
        return [str(self.root_of(e) / e.path) for e in chosen], [e.label for e in chosen]

    def counts(self) -> dict[str, dict[str, int]]:
        out = {c: {TRAIN: 0, VAL: 0} for c in self.classes}
        for e in self.files:
            out[self.classes[e.label]][e.split] += 1
        return out

    @property
    def fingerprint(self) -> str:
        """Changes when any file's content, class or split changes, or classes change."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classes).encode())
        for e in sorted(self.files, key=lambda e: (e.source, e.path)):
            h.update(f"{e.source}\0{e.path}\0{e.label}\0{e.split}\0{e.sha1}\n".encode())
        return h.hexdigest()

    def manifest(self) -> dict:
        return {
            "train_dir": self.train_dir,
            "val_dir": self.val_dir,
            "val_split": self.val_split,
            "image_size": self.image_size,
            "classes": self.classes,
            "counts": self.counts(),
            "fingerprint": self.fingerprint,
            "files": [asdict(e) | {"class": self.classes[e.label]} for e in self.files],
            "skipped": self.skipped,
            "excluded_classes": self.excluded_classes,
            "ignored_non_image_files": self.ignored_files,
            "duplicates": self.duplicates,
        }


def entry_name(e: FileEntry) -> str:
    """A file as the duplicates record names it."""
    return f"{'val_dir:' if e.source == 'val_dir' else ''}{e.path}"


def index_from_manifest(manifest: dict) -> DatasetIndex:
    """The dataset index a run recorded in its data.json (a resumed run trains on exactly these files)."""
    files = [FileEntry(f["path"], f["label"], f["split"], f["source"], f["size"], f["sha1"]) for f in manifest["files"]]
    return DatasetIndex(train_dir=manifest["train_dir"], val_dir=manifest["val_dir"], val_split=manifest["val_split"],
                        image_size=manifest["image_size"], classes=list(manifest["classes"]), files=files,
                        skipped=list(manifest.get("skipped", [])),
                        excluded_classes=list(manifest.get("excluded_classes", [])),
                        ignored_files=manifest.get("ignored_non_image_files", 0),
                        duplicates=dict(manifest.get("duplicates") or {}))
