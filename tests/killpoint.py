"""Run vgg and stop it at an exact file operation: a real signal to itself just before the Nth call of ``os.OP``
whose path matches PATTERN (fnmatch; for replace/rename/symlink/link the destination). The operation itself does
not happen (a SIGKILL never returns; a SIGTERM raises at the call).

    python -m tests.killpoint OP PATTERN N SIGNAL [vgg arguments...]

OP: replace, rename, symlink, link, mkdir, unlink, rmdir. SIGNAL: KILL, TERM, INT. With N = 0 nothing is stopped
and the number of matching calls is printed to stderr at exit (to find N).
"""

from __future__ import annotations

import atexit
import fnmatch
import os
import signal
import sys

_DESTINATION = {"replace", "rename", "symlink", "link"}


def arm(op: str, pattern: str, n: int, sig: str) -> None:
    real = getattr(os, op)
    seen = [0]

    def wrapped(*args, **kwargs):
        path = os.fsdecode(args[1] if op in _DESTINATION else args[0])
        if fnmatch.fnmatch(path, pattern):
            seen[0] += 1
            if seen[0] == n:
                sys.stderr.flush()
                os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
        return real(*args, **kwargs)

    setattr(os, op, wrapped)
    if n == 0:
        atexit.register(lambda: print(f"killpoint: {seen[0]} matching {op} calls", file=sys.stderr))


def main() -> None:
    op, pattern, n, sig, *args = sys.argv[1:]
    arm(op, pattern, int(n), sig)
    from vgg_cli.cli.main import main as vgg

    vgg(args)


if __name__ == "__main__":
    main()
