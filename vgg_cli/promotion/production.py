"""Production: which run ``runs/production`` points at, and every change of it: a person's ``vgg promote`` and
``vgg rollback``, a decision of ``vgg_cli.promotion.decide`` carried out (``apply_decision``), listing runs and
pruning old ones. The pointer and its history (newest last, for rollback) are kept by
``vgg_cli.runs.root.RunsRoot``; every change is one intent applied idempotently, so a command killed half-way is
completed by the next one, never repeated."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vgg_cli.errors import DataError, NoInputError, UsageError
from vgg_cli.runs.root import RunsRoot
from vgg_cli.runs.rundir import RunDir
from vgg_cli.runs.summary import Summary

log = logging.getLogger("vgg")


def _finished(run: Path) -> Summary:
    summary = RunDir(run).summary_or_none()
    if summary is None:
        raise NoInputError(f"run {str(run)!r} has no summary.json: it did not finish (resume it with "
                           f"`vgg train --resume {run}`)") from None
    if not summary.trained_to_end:
        raise UsageError(f"run {run.name!r} is {summary.status.value if summary.status else 'unfinished'}, not "
                         f"finished; resume it first")
    return summary


def promote_run(runs: RunsRoot, run: Path) -> None:
    """`vgg promote RUN`: a person's decision, no evaluation."""
    _finished(run)
    if run.parent.resolve() != runs.path.resolve():
        raise UsageError(f"run {str(run)!r} is not in {str(runs.path)!r}; production must point inside it")
    runs.complete_pending()  # a promote or rollback killed half-way is finished first, never done twice
    current = runs.production()
    if current is not None and current.name == run.name:
        log.info("%s is already in production", run.name)
        return
    runs.set_production(run.name, "promote")
    log.info("production: %s -> %s", current.name if current else "(none)", run.name)


def rollback(runs: RunsRoot) -> str:
    """Point production back at the run it replaced last; returns that run's name. A rollback killed half-way is
    completed, not repeated: retrying it goes back once in all."""
    pending = runs.complete_pending()
    if pending is not None and pending.get("how") == "rollback":
        log.info("production rolled back: %s -> %s (completing the interrupted rollback)", pending.get("from"),
                 pending["to"])
        return pending["to"]
    entries = runs.history()
    current = runs.production()
    if current is None or len(entries) < 2:
        raise NoInputError(f"nothing to roll back to in {str(runs.path)!r}: production has no earlier run")
    entries.pop()  # the current production
    previous = entries.pop()
    if not (runs.path / previous["run"]).is_dir():
        raise NoInputError(f"the previous production run {previous['run']!r} no longer exists in {str(runs.path)!r}")
    runs.set_production(previous["run"], "rollback", entries)
    log.info("production rolled back: %s -> %s", current.name, previous["run"])
    return previous["run"]


def apply_decision(runs: RunsRoot, run_name: str, record: dict) -> None:
    """Carry out a decision record; safe to repeat (a run killed half-way through finishing redoes it): a run
    that production already points at is not recorded twice."""
    runs.complete_pending()
    prod = runs.production()
    if record["promoted"]:
        if prod is None or prod.name != run_name:
            runs.set_production(run_name, "auto")
        log.info("promoted to production: %s (%s)", run_name, record["reason"])
    else:
        log.warning("not promoted: %s; production stays %s", record["reason"], prod.name if prod else "(none)")


def list_runs(runs: RunsRoot) -> list[dict]:
    """One row per run for `vgg runs`: a run without a summary is "unfinished", one with a damaged summary
    "damaged" (never a crash)."""
    prod = runs.production()
    latest = runs.latest()
    out = []
    for run in sorted(runs.runs(), key=RunDir.order):  # oldest first, by the recorded run order (not the name)
        try:
            s, status = run.read_summary(), None
        except NoInputError:
            s, status = Summary(), "unfinished"
        except DataError:
            s, status = Summary(), "damaged"
        out.append({"run": run.name, "started": s.started, "status": status or (s.status.value if s.status else None),
                    "images": s.images_total, "classes": len(s.classes) or None, "monitor": s.monitor,
                    "best": s.best_value, "promoted": s.promoted,
                    "production": prod is not None and run.root.resolve() == prod,
                    "latest": latest is not None and latest.root == run.root.resolve()})
    return out


def prune(runs: RunsRoot, keep: int, current: str) -> list[str]:
    """Delete the oldest runs beyond ``keep``; never production, the run it replaced last, latest or current."""
    entries = runs.history()
    protected = {current}
    production, latest = runs.production(), runs.latest()
    if production is not None:
        protected.add(production.name)
    if len(entries) >= 2:
        protected.add(entries[-2]["run"])
    if latest is not None:
        protected.add(latest.name)
    names = [r.name for r in sorted(runs.runs(), key=RunDir.order)]
    removed = []
    for name in names:  # oldest first, until at most `keep` runs are left (protected ones count, and stay)
        if len(names) - len(removed) <= keep:
            break
        if name in protected:
            continue
        shutil.rmtree(runs.path / name, ignore_errors=True)
        removed.append(name)
    if removed:
        log.info("output.keep=%d: removed old runs %s", keep, ", ".join(removed))
    return removed
