"""Writing and reading artifacts safely: the bottom layer every other module may use.

Every artifact is written to a temporary file in the destination folder, flushed and fsynced, then renamed
over the target with ``os.replace``, so a reader sees either the old file or the new one, never half a file. A
failed write is one line (ArtifactIOError, exit 74) naming the file and the reason ("disk full"); a JSON artifact
that is missing or damaged is one line too (``read_json``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from vgg_cli.errors import ArtifactIOError, DataError, NoInputError


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """mkstemp creates 0600 files; artifacts get the permissions a plain open() would give (0644 under umask 022).
    The umask is read from /proc (Linux), else by setting and restoring it, once, at the first write (not at
    import: importing vgg_cli changes nothing in the process)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Temporary names carry the writer's pid and host, so the next command in the same folder can tell a killed
# writer's leftovers (removed) from a live one's (kept): mkstemp/mkdtemp names, point()/place_copy() names,
# atomic_tree's moved-aside old folder. Names of another host (a shared disk), or without a pid (written before vgg
# put it there), go only when a day old.
_STALE = [re.compile(r"^\..+\.(\d+)@([A-Za-z0-9-]*)\.[A-Za-z0-9_]{8}\.tmp.*$"),
          re.compile(r"^\..+\.(\d+)@([A-Za-z0-9-]*)\.(?:tmp|link)$"), re.compile(r"^\..+\.old\.(\d+)@([A-Za-z0-9-]*)$")]
_OLD_STYLE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp.*$")
_DAY = 86400
_swept: set[str] = set()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def sweep_stale_temps(folder: Path) -> list[str]:
    """Remove what killed vgg commands left half-written in ``folder`` (once per folder per process); returns the
    names removed. Never touches anything but vgg's own hidden temporary names."""
    key = os.path.realpath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        found = [m for m in (p.match(entry.name) for p in _STALE) if m]
        try:
            if found and found[0].group(2) == _host():
                stale = not _alive(int(found[0].group(1)))
            elif found or _OLD_STYLE.match(entry.name):
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > _DAY
            else:
                continue
            if not stale:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
    return removed


@functools.lru_cache(maxsize=1)
def _host() -> str:

    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:16]


def _writer() -> str:
    """This process in a temporary name: pid@host."""
    return f"{os.getpid()}@{_host()}"


def _tmp_prefix(name: str) -> str:
    return f".{name}.{_writer()}."


def io_error(path: Path, e: OSError) -> ArtifactIOError:
    file_in_the_way = _file_in_the_way(Path(path)) if e.errno in (errno.EEXIST, errno.ENOTDIR) else None
    if file_in_the_way is not None:
        return ArtifactIOError(f"could not write {str(path)!r}: {str(file_in_the_way)!r} is a file, not a folder; "
                               f"point the setting (output.dir, cache.dir, --out) at a folder, or move that file away")
    why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return ArtifactIOError(f"could not write {str(path)!r}: {why}; free space or fix permissions and run again "
                           f"(the previous version of the file is intact)")


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest folder of ``path``'s that is a file (so nothing can be made below it), or None."""
    for parent in path.parents:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def as_os_error(e: BaseException) -> OSError | None:
    """The OSError a library's exception stands for when its text says the disk is full, read-only or forbidden
    (TensorFlow and h5py raise their own types), else None."""
    text = str(e)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in text or f"errno = {code}" in text:
            return OSError(code, os.strerror(code))
    return None


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=f".tmp{suffix}", dir=path.parent)
        os.fchmod(fd, _file_mode())
        os.close(fd)
    except OSError as e:
        raise io_error(path, e) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise io_error(path, e) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def read_json(path: Path, what: str | None = None) -> Any:
    """A JSON artifact: missing is NoInputError (66), unreadable or damaged is DataError (65), one line each."""
    what = what or Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NoInputError(f"{what} {str(path)!r} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {str(path)!r} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise DataError(f"{what} {str(path)!r} is damaged (not valid JSON: {e}); it was cut short or edited") from None


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_with(path: Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Atomic write through a function that writes to a path (e.g. ``model.save``)."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


def place_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` a copy of ``source``: a hard link when possible (free), else a real copy."""
    tmp = target.parent / f".{target.name}.{_writer()}.link"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(source, tmp)
    except OSError:
        write_with(target, lambda t: shutil.copyfile(source, t), suffix=target.suffix)
        return
    try:
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise io_error(target, e) from None
    # rename(2) of a hard link onto another link of the same file does nothing and succeeds: tmp is still there
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def point(link: Path, target_name: str) -> None:
    """Atomically make ``link`` a relative symlink to ``target_name`` (a sibling folder)."""
    tmp = link.parent / f".{link.name}.{_writer()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target_name, tmp)
        os.replace(tmp, link)
        _fsync_dir(link.parent)
    except OSError as e:
        raise io_error(link, e) from None


@contextlib.contextmanager
def atomic_tree(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write a file or a whole folder (a SavedModel) at; on success it
    replaces ``target`` (an old folder is moved aside, then removed)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temps(target.parent)
        tmp_dir = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target.name), suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise io_error(target, e) from None
    tmp = tmp_dir / target.name
    try:
        try:
            yield tmp
        except OSError:
            raise
        except Exception as e:  # a framework's own error for a full or read-only disk (TensorFlow's, h5py's)
            os_error = as_os_error(e)
            if os_error is None:
                raise
            raise os_error from None
        old = None
        if target.is_dir() and not target.is_symlink():
            old = target.parent / f".{target.name}.old.{_writer()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise io_error(target, e) from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
