"""Progress of long work (the frozen-prefix feature pass, predicting many files, INT8 calibration and checks; the
epochs use the same rule in ``vgg_cli.training.callbacks.ProgressBar``): a tqdm bar with count and rate on a
terminal; in a log or under cron, where a bar would be control characters, a plain line with the count, the rate
and the time left at least every ``plain_every_s()`` seconds (15; ``VGG_HEARTBEAT_S`` sets another)."""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

log = logging.getLogger("vgg")

PLAIN_EVERY_S = 15.0


def plain_every_s() -> float:
    """Seconds between plain progress lines off a terminal: ``VGG_HEARTBEAT_S``, else 15."""
    try:
        return max(0.0, float(os.environ.get("VGG_HEARTBEAT_S", PLAIN_EVERY_S)))
    except ValueError:
        return PLAIN_EVERY_S


class Progress:
    """``with Progress(total, "computing features") as p: p.update(n)``."""

    def __init__(self, total: int, what: str, unit: str = "img", tty: bool | None = None, clock=time.perf_counter):
        self.total, self.what, self.unit, self.clock = total, what, unit, clock
        self.done = 0
        self.t0 = self._shown = clock()
        self.bar = None
        if sys.stderr.isatty() if tty is None else tty:
            self.bar = tqdm(total=total, desc=what, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self._shown >= plain_every_s() and self.done < self.total:
            self._shown = now
            left = (self.total - self.done) / self.rate if self.rate > 0 else float("nan")
            log.info("%s: %d/%d %s (%.1f %s/s, about %.0fs left)", self.what, self.done, self.total, self.unit,
                     self.rate, self.unit, left)
