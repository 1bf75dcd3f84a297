"""The frozen-prefix feature cache: each image goes through the frozen leading conv blocks once.

Entries live on disk under ``cache.dir/<prefix key>/<sha1[:2]>/<sha1>.npy``:

- the *prefix key* is a hash of everything that decides the activations except the image: the backbone weights of
  the frozen prefix (their bytes), the cut point, the image size, the decoder, how a non-square image is made square
  (``data.resize``; squash, the first mode, adds nothing, so its keys are those from before the setting existed),
  the preprocessing, and the dtype;
- the entry name is the SHA-1 of the image file's content (from the dataset scan), so an edited or added file
  gets a new entry, a renamed or duplicated one reuses its entry, and a later run on the same data computes nothing.

During a run the entries of its images are held in RAM up to ``cache.ram_mb``; the rest are read back from disk
per batch, so memory is bounded by the budget, not by the dataset. Entries are written to a temporary file and
renamed; an entry that cannot be read back (e.g. after a crash) is computed again, also in the middle of training:
an entry removed while a run reads it (another run sharing ``cache.dir`` pruned it to ``cache.disk_mb``, or a
person cleaned the folder) is recomputed from its image by the same frozen prefix, saved again, and used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vgg_cli.config.schema import Config
from vgg_cli.data.images import DECODER_VERSION, check_resize
from vgg_cli.data.pipeline import batch_buffer, decode_workers, load_or_fail, prefetch_batches
from vgg_cli.errors import ArtifactIOError, VggError
from vgg_cli.platform.device import peak_rss_mib
from vgg_cli.progress import Progress
from vgg_cli.runs.root import RunsRoot

log = logging.getLogger("vgg")
FORMAT = "vgg-features-1"


CACHE_OFF, AUGMENTED, NOT_FROZEN = "cache.features=off", "augmentation is on", "block 1 is not frozen"


@dataclass(frozen=True)
class FeatureCut:
    """Where the model is cut for the feature cache, and whether the cache is used: the one decision that training
    (which writes the cache) and every reader of a finished run (calibration, evaluation, promotion, the label-issue
    search) take from ``feature_cut``, so the key and folder they compute always agree."""
    blocks: int  # leading conv blocks frozen: the cut is after block{blocks}_pool (0: nothing to cut)
    why_not: str | None  # why training does not feed on cached features (then readers have none), else None

    @property
    def cached(self) -> bool:
        return self.why_not is None


def frozen_prefix_blocks(freeze_blocks: Sequence[int]) -> int:
    """How many leading conv blocks are frozen: 3 for [1, 2, 3, 5], 0 for [2, 3]."""
    k = 0
    while k + 1 in freeze_blocks:
        k += 1
    return k


def final_frozen_blocks(cfg: Config) -> tuple[int, ...]:
    """The blocks that stay frozen to the end of a run: model.freeze_blocks, less finetune.unfreeze_blocks when
    there is a fine-tuning phase (training's last phase; ``vgg_cli.training.plan``)."""
    if cfg.finetune.epochs > 0:
        return tuple(b for b in cfg.model.freeze_blocks if b not in cfg.finetune.unfreeze_blocks)
    return tuple(cfg.model.freeze_blocks)


def feature_cut(cfg: Config, frozen_blocks: Sequence[int] | None = None) -> FeatureCut:
    """The cut for a phase that trains with ``frozen_blocks`` frozen (default: those of the finished run)."""
    blocks = frozen_prefix_blocks(final_frozen_blocks(cfg) if frozen_blocks is None else frozen_blocks)
    if cfg.cache.features == "off":
        return FeatureCut(blocks, CACHE_OFF)
    if cfg.augment.active:
        return FeatureCut(blocks, AUGMENTED)
    return FeatureCut(blocks, NOT_FROZEN if blocks == 0 else None)


def feature_store(runs: RunsRoot, cfg: Config, prefix_model, blocks: int) -> FeatureStore:
    """The store of the frozen prefix ``prefix_model`` (the model cut after ``blocks``) in the runs folder ``runs``
    (or ``cache.dir``): the folder is named by ``prefix_key``."""
    key = prefix_key(prefix_model, cfg.model.arch, blocks, cfg.data.image_size, cfg.data.resize)
    shape = tuple(int(d) for d in prefix_model.output.shape[1:])
    return FeatureStore(runs.feature_cache(cfg.cache.dir), key, shape, prefix_model.output.dtype)


def prefix_key(prefix_model, arch: str, blocks: int, image_size: int, resize: str = "squash") -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{arch}\0{blocks}\0{image_size}\0{DECODER_VERSION}\0vgg-bgr-mean\0"
             f"{np.dtype(prefix_model.output.dtype).name}\0".encode())
    if check_resize(resize) != "squash":  # squash's key is the one from before data.resize: its caches stay valid
        h.update(f"resize={resize}\0".encode())
    for w in prefix_model.weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(f"{w.path}:{a.dtype}:{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


class FeatureStore:
    """One prefix key's folder of ``.npy`` entries, named by image content hash."""

    def __init__(self, root: Path, key: str, shape: tuple[int, ...], dtype):
        self.dir = Path(root) / key
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def path(self, sha1: str) -> Path:
        return self.dir / sha1[:2] / f"{sha1}.npy"

    def _data_follows(self, f) -> bool:
        """Read an entry's .npy header from ``f``: True when it is an array of this store's shape and dtype (C order)
        whose data, complete, follows from the current position to the end of the file."""
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        return (tuple(shape) == self.shape and dtype == self.dtype and not fortran
                and os.fstat(f.fileno()).st_size == f.tell() + nbytes)

    def valid(self, sha1: str) -> bool:
        """The entry exists and is complete (its header and size only: the data is read when a batch needs it)."""
        try:
            with open(self.path(sha1), "rb") as f:
                return self._data_follows(f)
        except (OSError, ValueError, EOFError):
            return False

    def load_into(self, sha1: str, out: np.ndarray) -> bool:
        """Read an entry straight into ``out`` (C-contiguous, this store's shape and dtype): no temporary array per
        read, which on training's reader threads left the allocator holding memory that grew with the file count.
        False when the entry is missing or is not a complete array of this store's shape and dtype."""
        try:
            with open(self.path(sha1), "rb") as f:
                if not self._data_follows(f):
                    return False
                view = memoryview(out).cast("B")
                return f.readinto(view) == len(view)
        except (OSError, ValueError, EOFError):
            return False

    def save(self, sha1: str, arr: np.ndarray) -> None:
        target = self.path(sha1)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{sha1}.", suffix=".tmp", dir=target.parent)
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(arr, dtype=self.dtype), allow_pickle=False)
            os.replace(tmp, target)
        except BaseException as e:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if isinstance(e, OSError):
                why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
                raise ArtifactIOError(f"could not write the feature cache in {str(self.dir)!r}: {why}; free space, "
                                      f"point cache.dir at a disk with room, or set cache.features=off") from None
            raise


class FeatureSource:
    """Prefix activations of a fixed list of images (see ``vgg_cli.data.pipeline``): RAM for the first
    ``ram_items`` distinct images, disk for the rest."""

    def __init__(self, store: FeatureStore, shas: Sequence[str], ram_bytes: int):
        self.store = store
        self.shape, self.dtype = store.shape, store.dtype
        self.shas = list(shas)
        # Items with the same content share one slot.
        self._slot_of_sha: dict[str, int] = {}
        self.slot = np.array([self._slot_of_sha.setdefault(s, len(self._slot_of_sha)) for s in self.shas], np.int64)
        self.unique = list(self._slot_of_sha)
        item = int(np.prod(self.shape)) * self.dtype.itemsize
        self.item_bytes = item
        self.ram_items = min(len(self.unique), max(0, ram_bytes) // item)
        self._ram = np.empty((self.ram_items, *self.shape), self.dtype)
        self.computed = self.reused = self.recomputed = 0
        self._recompute = None  # (predict, slot -> image path, image size, resize mode), set by fill()
        self._lock = threading.Lock()
        self.failure = None  # the user error that stopped a batch (see pipeline.raise_source_failure)

    def describe(self) -> str:
        where = ("all in RAM" if self.ram_items == len(self.unique) else
                 f"{self.ram_items} of {len(self.unique)} in RAM, the rest read from {self.store.dir}")
        again = f", {self.recomputed} recomputed after they were removed during training" if self.recomputed else ""
        return (f"{self.computed} computed, {self.reused} reused from the cache{again}; "
                f"{_mib(len(self.unique) * self.item_bytes)}, {where}")

    def fill(self, predict, paths: Sequence[str], image_size: int, batch_size: int, stop_check=None,
             resize: str = "squash") -> None:
        """Make sure every item has an entry: load the cached ones (into RAM where they fit), compute the rest
        with ``predict`` (a batch of images -> their prefix activations), the images decoded at ``image_size`` in
        the ``resize`` mode (the one the store's prefix key was made with).
        ``stop_check()`` is called between batches (it raises to stop; entries computed so far are kept)."""
        first_path: dict[int, str] = {}
        for i, p in enumerate(paths):
            first_path.setdefault(int(self.slot[i]), p)
        self._recompute = (predict, first_path, image_size, resize)
        missing: list[int] = []
        now = time.time()
        for s, sha in enumerate(self.unique):
            if s < self.ram_items:
                if not self.store.load_into(sha, self._ram[s]):
                    missing.append(s)
                    continue
            elif not self.store.valid(sha):
                missing.append(s)
                continue
            with contextlib.suppress(OSError):  # recently used: kept longest by prune_cache
                os.utime(self.store.path(sha), (now, now))
        self.reused = len(self.unique) - len(missing)
        if not missing:
            return
        log.info("computing frozen-prefix features of %d images (%d already cached)", len(missing), self.reused)
        todo = [first_path[s] for s in missing]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=decode_workers(), thread_name_prefix="vgg-decode") as pool, \
                Progress(len(todo), "computing features") as progress:
            load = functools.partial(load_or_fail, size=image_size, resize=resize)
            for start, arrays in prefetch_batches(todo, load, batch_size, pool):
                if stop_check is not None:
                    stop_check()
                feats = np.asarray(predict(np.stack(arrays)))
                for j, f in enumerate(feats):
                    s = missing[start + j]
                    self.store.save(self.unique[s], f)
                    if s < self.ram_items:
                        self._ram[s] = f
                    self.computed += 1
                progress.update(len(feats))
        dt = time.perf_counter() - t0
        log.info("features computed in %.1fs (%.1f img/s)", dt, len(missing) / dt if dt > 0 else 0.0)
        log.debug("peak RSS after the feature pass: %s MiB", peak_rss_mib())

    def get(self, idx: np.ndarray) -> np.ndarray:
        out = batch_buffer((len(idx), *self.shape), self.dtype)
        gone: list[tuple[int, int]] = []  # (row, slot) of entries that could not be read
        for j, i in enumerate(idx):
            s = int(self.slot[int(i)])
            if s < self.ram_items:
                out[j] = self._ram[s]
            elif not self.store.load_into(self.unique[s], out[j]):
                gone.append((j, s))
        if gone:
            try:
                self._recompute_into(out, gone)
            except VggError as e:
                self.failure = self.failure or e
                raise
        return out

    def _recompute_into(self, out: np.ndarray, gone: list[tuple[int, int]]) -> None:
        """Entries removed (or damaged) since ``fill``: computed again from their images, saved, put in ``out``."""
        if self._recompute is None:
            raise RuntimeError("FeatureSource.get before fill()")
        predict, path_of, size, resize = self._recompute
        with self._lock:  # one recomputation at a time; another thread may have just saved the same entry
            todo = [(j, s) for j, s in gone if not self.store.load_into(self.unique[s], out[j])]
            if not todo:
                return
            feats = np.asarray(predict(np.stack([load_or_fail(path_of[s], size, resize) for _, s in todo])))
            for (j, s), f in zip(todo, feats):
                out[j] = f
                try:
                    self.store.save(self.unique[s], f)
                except ArtifactIOError as e:  # used from memory this time; computed again next time it is read
                    log.debug("%s", e)
            if not self.recomputed:
                log.warning("feature cache: entries of this run were removed from %s during training (another run "
                            "sharing cache.dir pruned it to its cache.disk_mb, or by hand); recomputing them from "
                            "their images (the first: %s)", self.store.dir, path_of[todo[0][1]])
            self.recomputed += len(todo)

    def close(self) -> None:
        pass


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 100 * 2**20 else f"{n / 2**20:.0f} MiB"


def prune_cache(root: Path, max_bytes: int, keep: set[Path] = frozenset()) -> int:
    """Remove the least recently used entries under ``root`` (any prefix key) until it holds at most
    ``max_bytes``; entries in ``keep`` are not removed. Returns the number removed."""
    entries = []
    total = 0
    for p in Path(root).glob("*/*/*.npy"):
        try:
            st = p.stat()
        except OSError:
            continue
        total += st.st_size
        entries.append((st.st_mtime, st.st_size, p))
    removed = 0
    for _, size, p in sorted(entries):
        if total <= max_bytes:
            break
        if p in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed += 1
            total -= size
    for d in Path(root).glob("*/*"):  # empty shard folders, then empty key folders
        with contextlib.suppress(OSError):
            d.rmdir()
    for d in Path(root).glob("*"):
        with contextlib.suppress(OSError):
            d.rmdir()
    return removed
