"""`vgg train` as one job: train (or resume) a run, then finish it, under one hold of the runs directory's lock.

Training (``vgg_cli.training.run``) ends at a run whose ``summary.json`` says its promotion is pending. This module sits
above training and the modules that read runs back, and decides what happens to the trained run: ``latest``,
the promotion decision against production (``vgg_cli.promotion.finish`` / ``vgg_cli.promotion.decide``) and pruning. So the data
flows one way: training never imports promotion or prediction, and promotion reads the run training wrote.

A run killed between training and its finish keeps ``promotion: pending``; ``vgg train --resume`` and
``--if-changed`` come back here and finish it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path

from vgg_cli.training.callbacks import attach_log_file
from vgg_cli.config.schema import Config
from vgg_cli.platform.distribute import worker_role
from vgg_cli.promotion.finish import finish
from vgg_cli.runs.root import runs_lock
from vgg_cli.training.run import TrainResult, resume_training, run_training


def train(cfg: Config, *, if_changed: bool = False, command: str = "") -> TrainResult:
    """Train a new run (or, with ``if_changed``, resume an unfinished one or do nothing) and finish it."""
    role = worker_role(cfg.train.distribute)
    worker = role is not None and role[1] > 0  # a multi-worker job's other worker never takes the chief's lock
    with contextlib.nullcontext() if worker else runs_lock(Path(cfg.output.dir), command):
        return complete(run_training(cfg, if_changed=if_changed, command=command))


def resume(run_dir: Path, command: str = "") -> TrainResult:
    """Continue an unfinished run from its last committed epoch, or finish one that trained to its end."""
    with runs_lock(Path(run_dir).parent, command):
        return complete(resume_training(run_dir, command))


def complete(result: TrainResult) -> TrainResult:
    """Finish a trained run (steps 2-5 of ``vgg_cli.promotion.finish``); anything else comes back as it is."""
    f = result.to_finish
    if f is None:
        return result
    handler = attach_log_file(f.paths.log, None) if f.chief else None  # the decision belongs in train.log too
    try:
        summary = finish(f.cfg, f.paths, f.index, result.summary, f.best, chief=f.chief)
    finally:
        if handler is not None:
            logging.getLogger("vgg").removeHandler(handler)
            handler.close()
    return replace(result, summary=summary, to_finish=None)
