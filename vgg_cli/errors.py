"""The project's user-facing errors.

Each carries a sysexits-style exit code; ``cli.main`` prints ``error: <message>`` on one line and exits
with that code, without a traceback. Anything that is not a ``VggError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NOT_PROMOTED = 3  # vgg train: a new model was trained and kept, but not promoted to production
# vgg train: training diverged (NaN/inf loss or weights); the run keeps its last good epoch and is never promoted
EXIT_DIVERGED = 4
EXIT_USAGE = 64  # bad command line
EXIT_DATA = 65  # bad data: too few classes, unreadable inputs
EXIT_NOINPUT = 66  # a file or folder that must exist does not (dataset, run, weights)
EXIT_UNAVAILABLE = 69  # an optional package the command needs is not installed (export runtimes, a backend)
EXIT_INTERNAL = 70  # a bug: unexpected exception
EXIT_IOERR = 74  # could not write an artifact (disk full, permissions)
EXIT_TEMPFAIL = 75  # locked or interrupted; try again later
EXIT_CONFIG = 78  # invalid configuration


class VggError(Exception):
    """A user-facing error: one line that names the thing, the bad value and the fix."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


# One class per kind of user error, named by what went wrong; the exit code comes with the kind.
class UsageError(VggError): exit_code = EXIT_USAGE  # noqa: E701
class ConfigError(VggError): exit_code = EXIT_CONFIG  # noqa: E701
class DataError(VggError): exit_code = EXIT_DATA  # noqa: E701
class NoInputError(VggError): exit_code = EXIT_NOINPUT  # noqa: E701
class UnavailableError(VggError): exit_code = EXIT_UNAVAILABLE  # noqa: E701
class ArtifactIOError(VggError): exit_code = EXIT_IOERR  # noqa: E701
class LockedError(VggError): exit_code = EXIT_TEMPFAIL  # noqa: E701
class InterruptedRun(VggError): exit_code = EXIT_TEMPFAIL  # noqa: E701
class TrainingDiverged(VggError): exit_code = EXIT_DIVERGED  # noqa: E701


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, cron, kill): raised by vgg's handler (``cli.main``) and handled exactly as Ctrl-C is, at
    every step of every command: exit 75, one line, resumable."""


def signal_name(e: BaseException) -> str:
    return "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
