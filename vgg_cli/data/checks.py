"""Checking image files for a scan: can each be read and decoded at the training size; its bytes, hash,
dimensions and duplicate print (``duplicates.image_print``: a perceptual hash and a thumbnail, from the decode).
Results are cached per file (``ScanCache``) while its size and mtime are unchanged, and files are checked
in parallel threads with a progress bar on a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from vgg_cli.data.duplicates import image_print
from vgg_cli.data.images import BadImage, decode, open_image, read_file
from vgg_cli.errors import ArtifactIOError
from vgg_cli.fsio import write_json


def check_one(path: Path, size: int) -> tuple[int, str, int, int, str, str] | str:
    """(bytes, sha1, width, height, perceptual hash, thumbnail) for a usable image, else the reason it is
    skipped."""
    try:
        data = read_file(path)
        width, height = open_image(data).size
        pixels = decode(data, size)
    except BadImage as e:
        return str(e)
    return (len(data), hashlib.sha1(data).hexdigest(), width, height, *image_print(pixels))


class ScanCache:
    """Per-file check results keyed by absolute path, trusted while the file's size and mtime are unchanged, so
    re-scanning a large unchanged folder reads nothing. Lives in the runs directory, never in the dataset."""

    VERSION = 3  # 3: the duplicate print (perceptual hash, thumbnail) of each usable file

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.hits = 0
        if path is not None and path.is_file():
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
                if d.get("version") == self.VERSION:
                    self.entries = d["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def check(self, path: Path, size: int) -> tuple | str:
        stamp = self._stamp(path)
        key = str(path)
        hit = self.entries.get(key)
        if stamp is not None and hit is not None and hit[0] == stamp[0] and hit[1] == stamp[1] and hit[2] == size:
            self.hits += 1
            return hit[3] if isinstance(hit[3], str) else tuple(hit[3])
        result = check_one(path, size)
        if stamp is not None and not (isinstance(result, str) and result.startswith(("permission", "cannot read"))):
            self.entries[key] = [stamp[0], stamp[1], size, result if isinstance(result, str) else list(result)]
        return result

    def save(self, keep: set[str]) -> None:
        if self.path is None:
            return

        self.entries = {k: v for k, v in self.entries.items() if k in keep}
        try:
            write_json(self.path, {"version": self.VERSION, "entries": self.entries})
        except ArtifactIOError:
            pass  # a cache that cannot be written only costs time next run


def check_all(paths: list[Path], size: int, desc: str, cache: ScanCache) -> list[tuple | str]:

    workers = min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: cache.check(p, size), paths)
        bar = tqdm(results, total=len(paths), desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)
        return list(bar)
