"""Indexing a dataset folder: classes, files, a per-file check, a stable split, a manifest and a fingerprint.

A folder dataset is ``ROOT/<class>/**/<image>``. Every candidate file is read and decoded once with the same
function training uses, so a bad file is found here (and listed with its reason) instead of crashing an epoch.
The dataset is only ever read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from vgg_cli.data.checks import ScanCache, check_all
from vgg_cli.data.images import IMAGE_EXTENSIONS, is_image_name
from vgg_cli.data.index import TRAIN, VAL, DatasetIndex, FileEntry, entry_name
from vgg_cli.data.leakage import Item, find_groups, log_record, one_side, record
from vgg_cli.data.names import name_bytes, shown, storable, unstorable
from vgg_cli.errors import DataError, NoInputError

SPLIT_SALT = b"vgg-split-v1:"


def split_value(relpath: str) -> float:
    """A stable number in [0, 1) for a path relative to the dataset root: a hash of its bytes on disk, so the
    locale (how Python decodes names) does not move a file between splits."""
    digest = hashlib.sha1(SPLIT_SALT + name_bytes(relpath)).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# How deep below a class folder the scan looks for images.
MAX_DEPTH = 32


def _below(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_images(folder: Path, root: Path | None = None,
                 seen: set[tuple[int, int]] | None = None) -> tuple[list[Path], int, list[dict]]:
    """Image files below the class folder ``folder`` of the dataset ``root``, the count of other files, and the
    folders left out.

    The link rule (README, "Symbolic links"): a file link is read wherever it points, and so is a class folder
    that is itself a link. Below a class folder, a folder link is followed, also out of the dataset, except when
    its real target is the folder holding it or one of its ancestors (a loop, ``..``, ``/``) or lies in the
    dataset outside this class (another class: its images would get this class's label). Each real folder is
    walked once (``seen`` is shared by all classes of a scan), at most ``MAX_DEPTH`` levels below the class."""
    seen = set() if seen is None else seen
    found: list[Path] = []
    left_out: list[dict] = []
    ignored = 0
    top = os.path.realpath(folder)
    dataset = os.path.realpath(root) if root is not None else None
    stack: list[tuple[Path, int]] = [(folder, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            st = os.stat(path)
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # a second link to a folder already walked
            continue
        seen.add((st.st_dev, st.st_ino))
        here = os.path.realpath(path)
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if not is_dir:
                if is_image_name(e.name):
                    found.append(Path(e.path))
                else:
                    ignored += 1
                continue
            why = _folder_left_out(os.path.realpath(e.path), here, top, dataset, depth + 1)
            if why is None:
                subdirs.append(Path(e.path))
            else:
                left_out.append({"path": e.path, "reason": why})
        stack.extend((d, depth + 1) for d in reversed(subdirs))
    found.sort(key=lambda p: p.relative_to(folder).parts)
    return found, ignored, left_out


def _folder_left_out(real: str, here: str, top: str, dataset: str | None, depth: int) -> str | None:
    """Why a folder (real path ``real``) found in ``here`` below the class folder ``top`` is not walked, or None."""
    if _below(here, real):
        return f"folder link to {shown(real)!r} leads back to a folder that contains it (a loop); not followed"
    if dataset is not None and _below(real, dataset) and not _below(real, top):
        return (f"folder link to {shown(real)!r} leads to another part of the dataset (another class would get this "
                f"class's label); not followed")
    if depth > MAX_DEPTH:
        return f"more than {MAX_DEPTH} folder levels below its class folder; not walked"
    return None


def _class_folders(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The class folders of ``root`` whose names vgg can store, and the others (class, reason)."""
    try:
        names = sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())
    except OSError as e:
        raise NoInputError(f"cannot list dataset folder {str(root)!r}: {e.strerror}; check its permissions") from None
    return ([n for n in names if storable(n)],
            [{"class": shown(n), "reason": f"folder {unstorable(n)}"} for n in names if not storable(n)])


def require_dir(path: str, key: str) -> Path:
    p = Path(path)
    if not storable(str(p.resolve())):
        raise DataError(f"{key} '{shown(str(p.resolve()))}': a folder on this path has a name that is not UTF-8 "
                        f"text, which vgg's run files (UTF-8) cannot hold; copy the dataset to a folder with a UTF-8 "
                        f"name, or rename it")
    if not p.exists():
        raise NoInputError(f"{key} {path!r} does not exist; set {key}=FOLDER to a folder with one subfolder per class")
    if not p.is_dir():
        raise NoInputError(f"{key} {path!r} is not a folder; set {key}=FOLDER to a folder with one subfolder per class")
    return p


def _collect(root: Path, class_names: Iterable[str], size: int, desc: str, cache: ScanCache):
    """Per class: usable (relpath, size, sha1) list; plus skipped entries and ignored count."""
    per_class: dict[str, list[tuple[str, int, str]]] = {}
    skipped: list[dict[str, str]] = []
    dims: dict[str, tuple] = {}  # relpath -> (width, height, perceptual hash, thumbnail)
    ignored = 0
    jobs: list[tuple[str, Path]] = []
    seen: set[tuple[int, int]] = set()
    for name in class_names:
        files, n_ignored, left_out = _walk_images(root / name, root, seen)
        ignored += n_ignored
        per_class[name] = []
        for f in files:
            why = unstorable(f.relative_to(root).as_posix())
            if why is None:
                jobs.append((name, f))
            else:  # never opened: nothing that names it could be written
                skipped.append({"path": shown(f.relative_to(root).as_posix()), "reason": why})
        skipped += [{"path": shown(Path(d["path"]).relative_to(root).as_posix()) + "/", "reason": d["reason"]}
                    for d in left_out]
    results = check_all([p for _, p in jobs], size, desc, cache)
    for (name, path), result in zip(jobs, results):
        rel = path.relative_to(root).as_posix()
        if isinstance(result, str):
            skipped.append({"path": rel, "reason": result})
        else:
            per_class[name].append((rel, result[0], result[1]))
            dims[rel] = tuple(result[2:])
    return per_class, skipped, ignored, dims


def scan_labelled(folder: str, image_size: int) -> tuple[Path, dict[str, list[str]], list[dict[str, str]]]:
    """A folder with one subfolder per class, checked file by file (nothing cached, nothing written): its resolved
    root, class folder name -> usable image paths (absolute, sorted), and the skipped files with reasons."""
    root = require_dir(folder, "DATA_DIR").resolve()
    folders, bad = _class_folders(root)
    per_class, skipped, _, _ = _collect(root, folders, image_size, "scanning", ScanCache(None))
    skipped += [{"path": b["class"] + "/", "reason": b["reason"]} for b in bad]
    return root, {c: sorted(str(root / rel) for rel, _, _ in files) for c, files in per_class.items()}, skipped


def class_folders_with_files(folder: str) -> list[str]:
    """The class folders of a labelled folder that hold at least one file (names only: no image opened), so a
    class the model does not know is refused before any model loads."""
    root = require_dir(folder, "DATA_DIR").resolve()
    names, _ = _class_folders(root)
    return [n for n in names if any(files for _, _, files in os.walk(root / n))]


def scan(data_cfg, previous_splits: dict[str, str] | None = None, cache_dir: Path | None = None) -> DatasetIndex:
    """Index ``data_cfg.train_dir`` (and ``val_dir``); ``previous_splits`` (relpath -> split) keeps old assignments;
    ``cache_dir`` holds the per-file check cache (see ScanCache)."""
    root = require_dir(data_cfg.train_dir, "data.train_dir").resolve()  # absolute: the cache is keyed by it
    cache = ScanCache(_cache_file(cache_dir, root) if cache_dir is not None else None)
    index = _scan(data_cfg, root, previous_splits, cache)
    cache.save({str(index.root_of(e).joinpath(e.path)) for e in index.files}
               | {str(root / s["path"]) for s in index.skipped if not s["path"].startswith("val_dir:")})
    return index


def _cache_file(cache_dir: Path, root: Path) -> Path:
    return cache_dir / f"scan-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]}.json"


def check_layout(data_cfg) -> None:
    """The cheap part of the scan (folders only, no image opened): run before anything slow or networked, so a
    wrong layout is reported first, not hidden behind, say, an ImageNet download error."""
    root = require_dir(data_cfg.train_dir, "data.train_dir")
    wanted, _ = _wanted_classes(data_cfg, root)
    if len(wanted) < 2:
        raise DataError(f"data.train_dir {str(root)!r} has 1 class folder ({wanted[0]}); at least 2 are needed, "
                        f"one per class")
    empty = [c for c in wanted if not _has_image_name(root / c)]
    if len(wanted) - len(empty) < 2:
        raise DataError(f"data.train_dir {str(root)!r}: class folder(s) {empty} hold no image files (extensions: "
                        f"{' '.join(IMAGE_EXTENSIONS)}), which leaves {len(wanted) - len(empty)} class(es) with "
                        f"images; at least 2 are needed: add images to {empty[0]!r}")


def _has_image_name(folder: Path) -> bool:
    """Whether a file with an image extension sits anywhere below ``folder`` (names only: nothing opened)."""
    return any(is_image_name(f) for _, _, files in os.walk(folder, followlinks=True) for f in files)


def _wanted_classes(data_cfg, root: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(class folders to use, folders left out with the reason) under ``root``, by ``data.classes``."""
    folders, excluded = _class_folders(root)
    if data_cfg.classes is not None:
        missing = [c for c in data_cfg.classes if c not in folders]
        if missing:
            raise DataError(f"data.classes names {missing} but {str(root)!r} has no such class folder(s) "
                            f"(found: {folders}); fix data.classes or add the folders")
        excluded += [{"class": c, "reason": "not listed in data.classes"} for c in folders if c not in data_cfg.classes]
        wanted = list(data_cfg.classes)
    else:
        wanted = folders
    if not wanted:
        raise DataError(f"data.train_dir {str(root)!r} has no class subfolders; put each class's images in "
                        f"its own subfolder ({str(root)}/cats/*.jpg, {str(root)}/dogs/*.jpg)")
    return wanted, excluded


def _scan(data_cfg, root: Path, previous_splits: dict[str, str] | None, cache: ScanCache) -> DatasetIndex:
    wanted, excluded = _wanted_classes(data_cfg, root)

    per_class, skipped, ignored, dims = _collect(root, wanted, data_cfg.image_size, "scanning", cache)
    all_dims = {("train_dir", rel): d for rel, d in dims.items()}
    classes: list[str] = []
    for name in wanted:
        if per_class[name]:
            classes.append(name)
            continue
        if data_cfg.classes is not None:
            raise DataError(f"class {name!r} listed in data.classes has no usable images in {str(root / name)!r} "
                            f"(extensions: {' '.join(IMAGE_EXTENSIONS)}); add images or remove it from data.classes")
        excluded.append({"class": name, "reason": "no usable images"})
    if len(classes) < 2:
        unusable = [c for c in wanted if c not in classes]
        raise DataError(f"data.train_dir {str(root)!r} has {len(classes)} class folder(s) with usable images "
                        f"({classes}); at least 2 are needed: {unusable} hold none (extensions: "
                        f"{' '.join(IMAGE_EXTENSIONS)}; unreadable files are listed by vgg check)")
    label_of = {c: i for i, c in enumerate(classes)}

    if data_cfg.val_dir is not None:
        files = [FileEntry(rel, label_of[name], TRAIN, "train_dir", size, sha)
                 for name in classes for rel, size, sha in per_class[name]]
        files += _scan_val_dir(data_cfg, classes, label_of, skipped, cache, all_dims)
        items = _items(files, all_dims)
        groups, exact = find_groups(items)
    else:
        files, items, groups, exact = _split(data_cfg, classes, per_class, previous_splits or {}, all_dims)
    split_of = {(f.source, f.path): f.split for f in files}
    duplicates = record(groups, exact, items, lambda it: split_of[(it.source, it.path)], classes,
                        data_cfg.duplicates)
    log_record(duplicates)
    gone = set(duplicates["dropped"])
    files = [f for f in files if entry_name(f) not in gone]
    if not any(e.split == TRAIN for e in files):
        raise DataError(f"no training images left in {str(root)!r} after the validation split; add images or lower "
                        f"data.val_split")
    return DatasetIndex(
        train_dir=str(root.resolve()),
        val_dir=str(Path(data_cfg.val_dir).resolve()) if data_cfg.val_dir else None,
        val_split=data_cfg.val_split,
        image_size=data_cfg.image_size,
        classes=classes,
        files=files,
        skipped=skipped,
        excluded_classes=excluded,
        ignored_files=ignored,
        dims={key: d[:2] for key, d in all_dims.items()},
        duplicates=duplicates,
    )


def _items(files: list[FileEntry], all_dims: dict) -> list[Item]:  # (all_dims: (w, h, hash, thumbnail))
    return [Item(f.source, f.path, f.label, f.sha1, all_dims[(f.source, f.path)][2:]) for f in files]


def _split(data_cfg, classes: list[str], per_class: dict, previous: dict[str, str], all_dims: dict):
    """The files of ``data.train_dir`` with their split: sticky ``previous`` assignments, else the stable hash;
    a group of duplicates on one side (``leakage.one_side``); every class with >= 2 images gets >= 1 validation
    image (only when nothing was assigned before, and an image without copies when there is one)."""
    files = [FileEntry(rel, label, TRAIN, "train_dir", size, sha)
             for label, name in enumerate(classes) for rel, size, sha in per_class[name]]
    splits = {f.path: previous.get(f.path) or (VAL if split_value(f.path) < data_cfg.val_split else TRAIN)
              for f in files}
    items = _items(files, all_dims)
    groups, exact = find_groups(items)
    one_side(groups, items, splits, previous, split_value)
    grouped = {items[i].path for g in groups for i in g}
    for name in classes:
        entries = [rel for rel, _, _ in per_class[name]]
        if data_cfg.val_split > 0 and len(entries) >= 2 and VAL not in {splits[rel] for rel in entries}:
            forced = min((rel for rel in entries if rel not in previous),
                         key=lambda rel: (rel in grouped, split_value(rel)), default=None)
            if forced is not None:
                splits[forced] = VAL
    return [replace(f, split=splits[f.path]) for f in files], items, groups, exact


def _scan_val_dir(data_cfg, classes: list[str], label_of: dict[str, int], skipped: list[dict[str, str]],
                  cache: ScanCache, all_dims: dict) -> list[FileEntry]:
    vroot = require_dir(data_cfg.val_dir, "data.val_dir").resolve()
    vfolders, vbad = _class_folders(vroot)
    skipped += [{"path": f"val_dir:{b['class']}/", "reason": b["reason"]} for b in vbad]
    for extra in (f for f in vfolders if f not in label_of):
        skipped.append({"path": f"val_dir:{extra}/", "reason": f"class {extra!r} is not a training class"})
    present = [c for c in classes if c in vfolders]
    per_class, vskipped, _, dims = _collect(vroot, present, data_cfg.image_size, "scanning val", cache)
    all_dims.update({("val_dir", rel): d for rel, d in dims.items()})
    skipped += [{"path": f"val_dir:{s['path']}", "reason": s["reason"]} for s in vskipped]
    return [FileEntry(rel, label_of[name], VAL, "val_dir", size, sha)
            for name in present for rel, size, sha in per_class[name]]


def previous_splits_from(manifest: dict, data_cfg) -> dict[str, str]:
    """Split assignments of an earlier run's manifest, when it split the same folder the same way."""
    same_root = manifest.get("train_dir") == str(Path(data_cfg.train_dir).resolve())
    if not same_root or manifest.get("val_dir") is not None or data_cfg.val_dir is not None:
        return {}
    if manifest.get("val_split") != data_cfg.val_split:
        return {}
    return {f["path"]: f["split"] for f in manifest.get("files", []) if f.get("source") == "train_dir"}
