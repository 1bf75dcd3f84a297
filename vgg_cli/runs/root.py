"""The runs folder (``output.dir``) as one object: its lock, the ``latest`` and ``production`` pointers and
production's history, its caches, new run directories and the walk over its runs. One run's files are
``vgg_cli.runs.rundir``; writing files safely is ``vgg_cli.fsio``. Only this module spells the names of what a runs
folder holds beside its runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

with warnings.catch_warnings():  # where only a soft lock exists, filelock warns: `_os_lock` says it in one line
    warnings.simplefilter("ignore")
    import filelock

from vgg_cli.errors import ArtifactIOError, ConfigError, DataError, LockedError, NoInputError, UnavailableError
from vgg_cli.fsio import io_error, point, read_json, write_json
from vgg_cli.runs.rundir import RunDir, iter_runs
from vgg_cli.runs.summary import RunStatus

log = logging.getLogger("vgg")
LATEST = "latest"  # the newest finished run
PRODUCTION = "production"  # the promoted run (vgg predict's default)
HISTORY = ".production.json"  # production's history, newest last
LOCK_FILE = ".lock"  # the OS lock (filelock)
HOLDER_FILE = ".lock.holder"  # who holds it, while it is held
CACHE = ".cache"


@dataclass(frozen=True)
class RunsRoot:
    """A runs folder. Cheap to make: nothing is read or created until a method needs it."""
    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(os.path.expanduser(str(path))))

    @classmethod
    def of(cls, cfg) -> RunsRoot:
        """The runs folder a config writes to (``output.dir``)."""
        return cls(cfg.output.dir)

    @classmethod
    def of_run(cls, run: RunDir | Path) -> RunsRoot:
        """The runs folder a run directory sits in."""
        return cls((run.root if isinstance(run, RunDir) else Path(run)).parent)

    def link(self, name: str) -> Path:
        """The path of one of the folder's links (``latest``, ``production``), whether it exists or not."""
        return self.path / name

    # ------------------------------------------------------------------------------------------ caches
    @property
    def cache(self) -> Path:
        """``<runs>/.cache``: the per-file check cache lives here (``vgg_cli.data.checks``)."""
        return self.path / CACHE

    def feature_cache(self, cache_dir: str | None = None) -> Path:
        """Where the frozen prefix's features are cached: ``cache.dir`` when set, else ``<runs>/.cache/features``."""
        return Path(cache_dir) if cache_dir else self.cache / "features"

    @property
    def lr_find(self) -> Path:
        """vgg lr-find's default folder for its plot and tables."""
        return self.path / "lr-find"

    @property
    def compile_cache(self) -> Path:
        """JAX's persistent compilation cache (unless JAX_COMPILATION_CACHE_DIR says otherwise)."""
        return self.cache / "jax"

    # ------------------------------------------------------------------------------------------ runs
    def runs(self) -> Iterator[RunDir]:
        """Every run, by name (pointers, hidden folders and stray folders left out)."""
        return iter_runs(self.path)

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def check_name_free(self, name: str | None) -> None:
        """Refuse an explicit output.name that is taken, before any work is done (new_run checks again)."""
        if name is not None and (self.path / name).exists():
            raise _name_taken(self.path / name)

    def new_run(self, name: str | None, dataset_name: str) -> RunDir:
        """Create a fresh run directory. An explicit name that exists is an error; generated names get -2, -3…"""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise io_error(self.path, e) from None
        if name is not None:
            return RunDir(_make(self.path / name, taken_is_error=True))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset_name).strip("._") or "run"
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
        for i in range(1, 1000):
            root = _make(self.path / (base if i == 1 else f"{base}-{i}"), taken_is_error=False)
            if root is not None:
                return RunDir(root)
        raise ArtifactIOError(f"could not create a new run directory under {str(self.path)!r}; too many runs "
                              f"named {base!r}")

    def next_seq(self) -> int:
        """The sequence number of the next run (one more than any so far): the run order no clock can change."""
        orders = [r.order() for r in self.runs()]  # (each reads its run.json once)
        return 1 + max((int(seq) for recorded, seq in orders if recorded == 1), default=0)

    def set_aside(self, run: RunDir, reason: str) -> dict:
        """Mark an unfinished run that cannot be resumed, so no later command tries again; its files stay."""
        record = {"run": run.name, "reason": reason[:500], "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(run.set_aside, record)
        return record

    def resolve(self, run: str | os.PathLike | None) -> Path:
        """``--run`` argument (a folder, or a name inside the runs folder) or the default: production, else latest."""
        if run is None:
            for name in (PRODUCTION, LATEST):  # the promoted model first
                if (self.path / name).exists():
                    return (self.path / name).resolve()
            raise NoInputError(f"no trained run found at {str(self.path / LATEST)!r}; train one with `vgg train` "
                               f"or pass --run DIR / --model FILE")
        p = Path(os.path.expanduser(str(run)))
        if p.is_dir():
            return p.resolve()
        if (self.path / str(run)).is_dir():
            return (self.path / str(run)).resolve()
        raise NoInputError(f"run {str(run)!r} not found (looked for the folder {str(p)!r} and "
                           f"{str(self.path / str(run))!r}); list the runs with `vgg runs --runs-dir {self.path}`")

    def find_resumable(self) -> Path:
        """The newest run that did not finish: it has no summary (or an unreadable one), was interrupted, or
        trained to the end but was stopped before its promotion was carried out. Half-made runs and runs set aside
        are skipped."""
        candidates = []
        for run in self.runs():
            if not run.is_complete() or run.set_aside.exists():
                continue  # half-made (killed while being created), or set aside as unresumable
            summary = run.summary_or_none()
            if summary is None or summary.status in (None, RunStatus.INTERRUPTED) or summary.needs_finishing:
                candidates.append((run.order(), run.root))
        if not candidates:
            raise NoInputError(f"no unfinished run to resume in {str(self.path)!r}; pass --resume RUN_DIR or start "
                               f"a new run without --resume")
        return max(candidates)[1]

    # ------------------------------------------------------------------------------------------ pointers
    @property
    def latest_link(self) -> Path:
        return self.path / LATEST

    def latest(self) -> RunDir | None:
        """The run ``latest`` points at, or None."""
        link = self.latest_link
        return RunDir(link.resolve()) if link.exists() else None

    def point_latest(self, run: RunDir) -> None:
        """``latest`` -> ``run``, unless it already points at a run created after it."""
        current = self.latest()
        if current is not None and current.root != run.root.resolve() and current.root.is_dir() \
                and current.order() > run.order():
            log.info("%s stays at the newer run %s", LATEST, current.name)
            return
        point(self.latest_link, run.root.name)

    def production(self) -> Path | None:
        """The production run's folder, or None."""
        link = self.path / PRODUCTION
        return link.resolve() if link.exists() else None

    def history(self) -> list[dict]:
        """Production's history (newest last); none yet is empty, a damaged record a one-line DataError."""
        return self._record()["history"]

    def _record(self) -> dict:
        """``.production.json``: {"history": [{"run", "at", "how"}...], "pending": the change being made}."""
        path = self.path / HISTORY
        if not path.exists():
            return {"history": [], "pending": None}
        record = read_json(path, "production history")
        entries = record.get("history") if isinstance(record, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("run"), str)
                                                    for e in entries):
            raise DataError(f"production history {str(path)!r} is damaged (not a list of runs); restore it from a "
                            f"backup, or delete it to start a new history (the production link stays)")
        pending = record.get("pending")
        return {"history": entries, "pending": pending if isinstance(pending, dict) and "to" in pending else None}

    def set_production(self, run_name: str, how: str, entries: list[dict] | None = None) -> None:
        """Point ``production`` at ``run_name`` and record it, as one intent applied idempotently: the history
        with the change marked pending, then the pointer, then the history without the mark. A command killed
        anywhere in between leaves the mark, and the next command that touches production completes it
        (``complete_pending``) instead of doing it again."""
        record = self._record()
        entries = list(record["history"] if entries is None else entries)
        entries.append({"run": run_name, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "how": how})
        current = self.production()
        pending = {"to": run_name, "how": how, "from": current.name if current else None}
        write_json(self.path / HISTORY, {"history": entries, "pending": pending})
        point(self.path / PRODUCTION, run_name)
        write_json(self.path / HISTORY, {"history": entries})

    def complete_pending(self) -> dict | None:
        """Finish a production change a killed command left half-made (its history written, the pointer maybe
        not moved); returns that change ({"to", "how", "from"}), or None when there was none."""
        record = self._record()
        pending = record["pending"]
        if pending is None:
            return None
        current = self.production()
        if (current is None or current.name != pending["to"]) and (self.path / pending["to"]).is_dir():
            point(self.path / PRODUCTION, pending["to"])
        write_json(self.path / HISTORY, {"history": record["history"]})
        log.info("completed an interrupted change of production: %s -> %s (%s)", pending.get("from") or "(none)",
                 pending["to"], pending.get("how"))
        return pending

    # ------------------------------------------------------------------------------------------ the lock
    @contextlib.contextmanager
    def lock(self, command: str = "") -> Iterator[str | None]:
        """Hold the exclusive lock of the runs folder (``<runs>/.lock``): one per command, taken once.

        The operating system's file lock through ``filelock`` (``flock`` on POSIX, ``msvcrt.locking`` on Windows):
        the OS releases it when the holder exits, however it dies (even SIGKILL), so a lock left by a dead process
        is reclaimed by simply taking it. ``<runs>/.lock.holder`` names the holder (pid, host, start time, command)
        for the message a second run gets; it is removed on a clean release, so a holder file found when taking
        the lock means the previous holder died, which is logged. Yields that stale holder's description, or None.
        """
        lock_file, holder_file = self.path / LOCK_FILE, self.path / HOLDER_FILE
        created = not self.path.exists()
        try:
            os_lock = self._take(lock_file)
        except filelock.Timeout:
            raise LockedError(f"another vgg run holds the lock on {str(self.path)!r} ({_holder(holder_file)}); wait "
                              f"for it to finish, or use another output.dir") from None
        except OSError as e:
            raise io_error(lock_file, e) from None
        try:
            stale = _holder(holder_file) if holder_file.exists() else None
            write_json(holder_file, {"pid": os.getpid(), "host": socket.gethostname(),  # (full disk: one line, 74)
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "command": command or " ".join(sys.argv[:1])})
            log.debug("holding the lock on %s", self.path)
            if stale:
                log.warning("took over the lock of a vgg run that is no longer running (%s)", stale)
            try:
                yield stale
            finally:
                holder_file.unlink(missing_ok=True)
        finally:
            left = _only_the_lock(self.path)  # a command that failed before writing anything leaves nothing
            if left:
                lock_file.unlink(missing_ok=True)  # while still held: a later command makes its own
            os_lock.release()
            if left and created:
                with contextlib.suppress(OSError):  # not empty: another command started in it meanwhile
                    self.path.rmdir()

    def _take(self, lock_file: Path):
        """The OS lock on ``lock_file``, taken without waiting (the folder made first; made again when a failed
        command removed it between the two)."""
        def take():
            self.path.mkdir(parents=True, exist_ok=True)
            os_lock = _os_lock()(str(lock_file), timeout=0)
            os_lock.acquire()
            return os_lock

        try:
            return take()
        except FileNotFoundError:
            return take()


def _only_the_lock(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but the lock's own files."""
    try:
        return set(os.listdir(folder)) <= {LOCK_FILE, HOLDER_FILE}
    except OSError:
        return False


def _os_lock():
    """filelock's lock class of this platform's OS file lock; a one-line error where there is none (filelock would
    fall back to a soft lock, which a killed holder leaves behind forever). Reading runs needs no lock: predict
    works anywhere."""
    if filelock.FileLock is filelock.SoftFileLock:
        raise UnavailableError(f"locking the runs folder needs the operating system's file locks (fcntl or msvcrt), "
                               f"which this Python on {sys.platform} lacks; run vgg train, promote and rollback where "
                               f"they exist (Linux, macOS, Windows)")
    return filelock.FileLock


def _holder(holder_file: Path) -> str:
    try:
        return _describe_holder(holder_file.read_text(encoding="utf-8"))
    except OSError:
        return "holder unknown"


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}"
                f"{', ' + info['command'] if info.get('command') else ''}")
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _make(root: Path, taken_is_error: bool) -> Path | None:
    try:
        root.mkdir()
    except FileExistsError:
        if taken_is_error:
            raise _name_taken(root) from None
        return None
    except OSError as e:
        raise io_error(root, e) from None
    return root


def _name_taken(root: Path) -> ConfigError:
    return ConfigError(f"run directory {str(root)!r} already exists; choose another output.name or "
                       f"set output.name=null for a timestamped one")
