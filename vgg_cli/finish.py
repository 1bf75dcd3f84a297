"""The end of a run, after its last epoch: summary, ``latest``, the promotion decision, pruning.

Part of the commit protocol (``vgg_cli.checkpoints`` commits the epochs): every step here can be redone, so a run
killed at any moment after its last epoch is finished by ``vgg train --resume`` or ``--if-changed``, and its
promotion is decided exactly once and carried out exactly once:

1. ``summary.json`` with status finished/early_stopped and ``promotion: {"pending": true}``;
2. ``latest`` points at the run (unless a newer run took it meanwhile);
3. the decision (evaluation, no side effects) is written into ``summary.json`` with ``applied: false``;
4. production is moved when promoted (not again if it already points at the run), then ``applied: true``;
5. ``output.keep`` pruning.

A diverged run stops before 2: it is never ``latest`` and never promoted.
"""

from __future__ import annotations

import logging

from vgg_cli.device import peak_rss_mib
from vgg_cli.promote import apply_decision, judge, prune
from vgg_cli.fsio import point, write_json
from vgg_cli.rundir import RunDir
from vgg_cli.runs import LATEST

log = logging.getLogger("vgg")


def point_latest(paths: RunDir) -> None:
    """``latest`` -> this run, unless it already points at a run created after this one."""
    link = paths.root.parent / LATEST
    if link.exists():
        current = link.resolve()
        if current != paths.root.resolve() and current.is_dir() and \
                RunDir(current).created() > paths.created():
            log.info("%s stays at the newer run %s", LATEST, current.name)
            return
    point(link, paths.root.name)


def finish(cfg, paths: RunDir, index, summary: dict, best: dict | None, chief: bool = True) -> dict:
    """Steps 2-5 above for a run whose summary.json (step 1) is written; returns the final summary."""
    point_latest(paths)
    if not chief:  # a multi-worker job's other workers: the chief decides
        return summary
    promotion = summary.get("promotion")
    if promotion is None or promotion.get("pending"):
        promotion = {**judge(cfg, paths, index, best), "applied": False}
        summary["promotion"] = promotion
        write_json(paths.summary, summary)
    if promotion.get("applied") is False:
        apply_decision(paths.root.parent, paths.root.name, promotion)
        promotion["applied"] = True
        summary.setdefault("timings", {})["peak_rss_mib"] = peak_rss_mib()  # promotion's evaluation included
        write_json(paths.summary, summary)
    if cfg.output.keep is not None:
        prune(paths.root.parent, cfg.output.keep, paths.root.name)
    return summary
