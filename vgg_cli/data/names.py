"""File names as the file system has them, and as vgg's text artifacts can hold them.

On POSIX a file name is bytes. Python gives it as a str decoded with the file system encoding (the locale's, UTF-8
almost everywhere), a byte that does not decode becoming a lone surrogate (``surrogateescape``): a Latin-1 name
``b"\\xe9t\\xe9.png"`` is ``"\\udce9t\\udce9.png"`` on a UTF-8 system. Such a str opens the file, but it is not
text: it cannot be written as UTF-8, so data.json, the scan cache, logs, CSV and report files could not name it.

- ``name_bytes`` is what the split hashes: the name's bytes on disk, whatever the locale (for every UTF-8 name on a
  UTF-8 system these are the UTF-8 bytes the split always hashed, so no existing image moves between splits);
- ``unstorable`` says why a name cannot be used (the scan skips that file and lists it with the reason);
- ``shown`` is a name as text for such a listing: bytes that are not UTF-8 as ``\\xNN``.
"""

from __future__ import annotations

import os
import sys


def name_bytes(name: str) -> bytes:
    """A (relative) path as the file system's bytes."""
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:  # not a name the file system gave us (no such file can be opened anyway)
        return name.encode("utf-8", "surrogatepass")


def storable(name: str) -> bool:
    """Whether ``name`` is text that UTF-8 files (JSON, CSV, logs) can hold."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str) -> str:
    """``name`` as printable text: its bytes decoded as UTF-8, any byte that is not UTF-8 as ``\\xNN``."""
    return name_bytes(name).decode("utf-8", "backslashreplace")


def unstorable(name: str) -> str | None:
    """Why a file (or folder) of this name cannot be used, or None when it can."""
    if storable(name):
        return None
    try:
        name_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        return ("name is not valid UTF-8 (its bytes shown as \\xNN: Latin-1 or another legacy encoding?): vgg's "
                "run files (data.json, reports) are UTF-8 text and could not name it, so it is left out; give it a "
                "UTF-8 name to use it (`convmv -f latin1 -t utf-8 -r DIR` lists the renames)")
    return (f"name is UTF-8 but this process decodes file names as {sys.getfilesystemencoding()} (the locale), so "
            f"vgg's run files could not name it and it is left out; run vgg under a UTF-8 locale (LANG=C.UTF-8) "
            f"to use it")
