"""Run directories as a collection: creating and naming them, the ``latest`` and ``production`` pointers, the
lock, and finding runs to resume or predict with. One run's files are ``vgg_cli.runs.rundir``; writing files safely is
``vgg_cli.fsio``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from vgg_cli.errors import ArtifactIOError, ConfigError, LockedError, NoInputError
from vgg_cli.fsio import io_error
from vgg_cli.runs.rundir import FINISHED, RunDir, iter_runs

log = logging.getLogger("vgg")
LATEST = "latest"
PRODUCTION = "production"  # the promoted run (vgg_cli.promotion.decide moves it)


def check_run_name_free(runs_dir: Path, name: str | None) -> None:
    """Refuse an explicit output.name that is taken, before any work is done (new_run_dir checks again)."""
    if name is not None and (runs_dir / name).exists():
        raise _name_taken(runs_dir / name)


def _name_taken(root: Path) -> ConfigError:
    return ConfigError(f"run directory {str(root)!r} already exists; choose another output.name or "
                       f"set output.name=null for a timestamped one")


def new_run_dir(runs_dir: Path, name: str | None, dataset_name: str) -> RunDir:
    """Create a fresh run directory. An explicit name that exists is an error; generated names get -2, -3…"""
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io_error(runs_dir, e) from None
    if name is not None:
        root = runs_dir / name
        try:
            root.mkdir()
        except FileExistsError:
            raise _name_taken(root) from None
        except OSError as e:
            raise io_error(root, e) from None
        return RunDir(root)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset_name).strip("._") or "run"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    for i in range(1, 1000):
        root = runs_dir / (base if i == 1 else f"{base}-{i}")
        try:
            root.mkdir()
            return RunDir(root)
        except FileExistsError:
            continue
        except OSError as e:
            raise io_error(root, e) from None
    raise ArtifactIOError(f"could not create a new run directory under {str(runs_dir)!r}; too many runs named {base!r}")


def resolve_run(run: str | os.PathLike | None, runs_dir: Path) -> Path:
    """``--run`` argument (a folder, or a name inside the runs dir) or the default ``runs/latest``."""
    if run is None:
        for name in ("production", LATEST):  # the promoted model first
            if (runs_dir / name).exists():
                return (runs_dir / name).resolve()
        raise NoInputError(f"no trained run found at {str(runs_dir / LATEST)!r}; train one with `vgg train` or "
                           f"pass --run DIR / --model FILE")
    p = Path(os.path.expanduser(str(run)))
    if p.is_dir():
        return p.resolve()
    if (runs_dir / str(run)).is_dir():
        return (runs_dir / str(run)).resolve()
    raise NoInputError(f"run {str(run)!r} not found (looked for the folder {str(p)!r} and "
                       f"{str(runs_dir / str(run))!r}); "
                       f"list your runs with `ls {runs_dir}`")


# ------------------------------------------------------------------------------------------------ lock

LOCK_FILE = ".lock"


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on {info['host']}, started {info['started']}"
                f"{', ' + info['command'] if info.get('command') else ''}")
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


# Locks this process holds: {resolved runs dir: depth}. flock is per open file, so taking the lock again in the
# same process (the CLI takes it before importing Keras, training takes it again) must not open the file twice.
_HELD: dict[str, int] = {}


@contextlib.contextmanager
def runs_lock(runs_dir: Path, command: str = "") -> Iterator[str | None]:
    """Hold the exclusive lock of a runs directory (see ``_runs_lock``); re-entrant within one process. Taking
    over the lock of a holder that died is logged here."""
    key = os.path.realpath(runs_dir)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield None
        finally:
            _HELD[key] -= 1
        return
    with _runs_lock(runs_dir, command) as stale:
        if stale:
            log.warning("took over the lock of a vgg run that is no longer running (%s)", stale)
        _HELD[key] = 1
        try:
            yield stale
        finally:
            del _HELD[key]


@contextlib.contextmanager
def _runs_lock(runs_dir: Path, command: str = "") -> Iterator[str | None]:
    """Hold the exclusive lock of a runs directory (``<runs>/.lock``) for one training run.

    An advisory ``flock``: the kernel releases it when the holder exits, however it dies (even SIGKILL), so a
    lock left by a dead process is reclaimed by simply taking it. The file names the holder (pid, host, start
    time) for the message a second run gets; it is emptied on a clean release, so content found when taking the
    lock means the previous holder died, which is reported. Yields that stale holder's description, or None.
    """
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(runs_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise io_error(runs_dir / LOCK_FILE, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            raise LockedError(f"another vgg run holds the lock on {str(runs_dir)!r} ({holder}); wait for it to "
                              f"finish, or use another output.dir") from None
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        stale = _describe_holder(previous) if previous else None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command or " ".join(sys.argv[:1])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        try:
            yield stale
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def needs_finishing(summary: dict | None) -> bool:
    """A run that trained all its epochs but was stopped before its promotion was decided and carried out."""
    if not isinstance(summary, dict) or summary.get("status") not in FINISHED:
        return False
    promotion = summary.get("promotion")
    return promotion is None or bool(promotion.get("pending")) or promotion.get("applied") is False


def find_resumable(runs_dir: Path) -> Path:
    """The newest run in ``runs_dir`` that did not finish: it has no summary (or an unreadable one), was
    interrupted, or trained to the end but was stopped before its promotion was carried out."""
    candidates = []
    for run in iter_runs(runs_dir):
        summary = run.summary_or_none()
        status = summary.get("status") if summary else None
        if status in (None, "interrupted") or needs_finishing(summary):
            candidates.append((run.root.stat().st_mtime, run.root))
    if not candidates:
        raise NoInputError(f"no unfinished run to resume in {str(runs_dir)!r}; pass --resume RUN_DIR or start a "
                           f"new run without --resume")
    return max(candidates)[1]
