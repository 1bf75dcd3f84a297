"""Which layout a dataset folder has, found from its folder names alone (no image is opened, nothing slow):

- **classes**: one subfolder per class (``DATA/cats``, ``DATA/dogs``); validation is split off (``data.val_split``)
  unless ``data.val_dir`` names a folder;
- **splits**: the subfolders are split names, each with one subfolder per class, as Ultralytics, ImageNet and
  Kaggle lay datasets out (``DATA/train/cats``, ``DATA/val/cats``, ``DATA/test/cats``): training from ``train/``,
  validation from ``val/`` (or ``valid/``, ``validation/``), ``test/`` evaluated after training.

Mixing split folders and class folders is an error, as is a split layout without ``train/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vgg_cli.errors import DataError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Layout:
    kind: str  # "classes" | "splits"
    train_dir: str
    val_dir: str | None
    test_dir: str | None

    def describe(self) -> str:
        if self.kind == "classes":
            how = f"validation from {self.val_dir}" if self.val_dir else "validation split off by data.val_split"
            return f"one folder per class in {self.train_dir} ({how})"
        parts = [f"train {self.train_dir}", f"validation {self.val_dir}" if self.val_dir else
                 "validation split off train/ by data.val_split"]
        if self.test_dir:
            parts.append(f"test {self.test_dir} (evaluated after training, not used for promotion)")
        return "split folders: " + ", ".join(parts)


def _folders(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []  # an unreadable folder is reported by the scan, with its reason


def find_layout(data_cfg) -> Layout:
    """The layout of ``data_cfg.train_dir`` (which exists), with the folders each split comes from."""
    root = Path(data_cfg.train_dir)
    folders = _folders(root)
    splits = {f: SPLIT_NAMES[f.lower()] for f in folders if f.lower() in SPLIT_NAMES}
    if not splits or data_cfg.classes is not None and set(splits) <= set(data_cfg.classes):
        return Layout("classes", str(root), data_cfg.val_dir, data_cfg.test_dir)  # (classes named "train": asked)
    others = [f for f in folders if f.lower() not in SPLIT_NAMES]
    if others:
        raise DataError(f"data.train_dir {str(root)!r} mixes split folders ({', '.join(sorted(splits))}) with other "
                        f"folders ({', '.join(others[:5])}); use split folders only (train/<class>/, val/<class>/, "
                        f"test/<class>/) or class folders only")
    by_split: dict[str, list[str]] = {}
    for folder, split in splits.items():
        by_split.setdefault(split, []).append(folder)
    twice = {s: f for s, f in by_split.items() if len(f) > 1}
    if twice:
        s, f = next(iter(twice.items()))
        raise DataError(f"data.train_dir {str(root)!r} has {len(f)} {s} folders ({', '.join(f)}); keep one")
    if "train" not in by_split:
        raise DataError(f"data.train_dir {str(root)!r} has split folders ({', '.join(sorted(splits))}) but no train/; "
                        f"put the training images in {str(root / 'train')}/<class>/")
    for key, split in (("data.val_dir", "val"), ("data.test_dir", "test")):
        if split in by_split and getattr(data_cfg, key.split(".")[1]) is not None:
            raise DataError(f"{key} is set and data.train_dir {str(root)!r} has its own {by_split[split][0]}/; "
                            f"set {key}=null to use it, or point data.train_dir at the training folder itself")
    pick = {s: str(root / f[0]) for s, f in by_split.items()}
    return Layout("splits", pick["train"], pick.get("val", data_cfg.val_dir), pick.get("test", data_cfg.test_dir))


def apply_layout(cfg):
    """``cfg`` with data.train_dir, val_dir and test_dir as the layout says, and the layout."""
    layout = find_layout(cfg.data)
    if layout.kind == "classes":
        return cfg, layout
    data = cfg.data.model_copy(update={"train_dir": layout.train_dir, "val_dir": layout.val_dir,
                                       "test_dir": layout.test_dir})
    return cfg.model_copy(update={"data": data}), layout
