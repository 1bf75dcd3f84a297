"""The decisions of a cron night (``vgg train --if-changed``) that need no framework: is there an unfinished run of
this same job to finish first, and has anything changed since the latest run. They are taken before Keras loads,
so an unchanged night costs a scan (mostly read from the scan cache), not a TensorFlow import."""

from __future__ import annotations

import logging
from pathlib import Path

from vgg_cli.config.digest import config_digest
from vgg_cli.config.schema import Config
from vgg_cli.data.index import DatasetIndex
from vgg_cli.errors import NoInputError
from vgg_cli.runs.root import RunsRoot
from vgg_cli.runs.rundir import RunDir
from vgg_cli.runs.summary import Outcome, Summary
from vgg_cli.training.prepare import resolve_sources, scan_dataset
from vgg_cli.training.result import TrainResult

log = logging.getLogger("vgg")

# --if-changed resumes an unfinished run at most this many times, so a run that keeps crashing cannot block
# every later night.
MAX_AUTO_RESUMES = 3


def unfinished_same_job(cfg: Config, runs: RunsRoot) -> RunDir | None:
    """Cron mode (--if-changed): the newest run that did not finish, if it is newer than runs/latest and was
    started with this same config. It is finished before anything new is trained."""
    try:
        candidate = runs.find_resumable()
    except NoInputError:
        return None
    latest = runs.latest()
    if latest is not None and latest.order() > RunDir(candidate).order():
        return None
    run = RunDir(candidate)
    info = run.info_or_none()
    if info is None:
        return None
    if len(info.get("resumed", [])) >= MAX_AUTO_RESUMES:
        log.warning("not resuming unfinished run %s again: it was resumed %d times without finishing; training a "
                    "new run (resume it by hand with --resume to retry)", candidate.name, len(info["resumed"]))
        return None
    if info.get("config_digest") != config_digest(cfg):
        log.info("not resuming unfinished run %s: it was started with a different config", candidate.name)
        return None
    log.info("an earlier run of this job did not finish (%s): resuming it", candidate.name)
    return run


def latest_summary(runs: RunsRoot) -> tuple[Path, Summary] | None:
    """(runs/latest's directory, its summary), or None when there is no finished run."""
    latest = runs.latest()
    summary = latest.summary_or_none() if latest is not None else None
    return None if summary is None else (latest.root, summary)


def unchanged(runs: RunsRoot, index: DatasetIndex, digest: str) -> TrainResult | None:
    """"nothing to do" when the dataset ``index`` and the config ``digest`` equal those of runs/latest, else None."""
    latest = latest_summary(runs)
    if latest and latest[1].fingerprint == index.fingerprint and latest[1].config_digest == digest:
        log.info("nothing to do: the dataset and the config are unchanged since run %s", latest[0].name)
        return TrainResult(Outcome.NOTHING_TO_DO, latest[0], latest[1])
    return None


def nothing_to_do(cfg: Config, runs: RunsRoot) -> tuple[TrainResult | None, DatasetIndex | None]:
    """Before the framework loads: (the "nothing to do" answer, None) when no unfinished run of this job waits and
    nothing changed; else (None, the dataset scanned, for the run to train on; None when an unfinished run is
    resumed first)."""
    if latest_summary(runs) is None or unfinished_same_job(cfg, runs) is not None:
        return None, None
    index = scan_dataset(resolve_sources(cfg, runs), runs, say=False)  # said by the run that trains on it
    return unchanged(runs, index, config_digest(cfg)), index
