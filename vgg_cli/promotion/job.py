"""`vgg train` as one job: train (or resume) a run, then finish it.

Training (``vgg_cli.training.run``) ends at a run whose ``summary.json`` says its promotion is pending. This
module sits above training and the modules that read runs back, and decides what happens to the trained run:
``latest``, the promotion decision against production (``vgg_cli.promotion.finish`` / ``decide``) and pruning. So
the data flows one way: training never imports promotion or prediction, and promotion reads the run training wrote.
The caller (``vgg_cli.cli.train``) holds the runs folder's lock around all of it, taken once.

A run killed between training and its finish keeps ``promotion: pending``; ``vgg train --resume`` and
``--if-changed`` come back here and finish it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from vgg_cli.config.schema import Config
from vgg_cli.errors import InterruptedRun, signal_name
from vgg_cli.training.callbacks import attach_log_file, detach_log_file
from vgg_cli.promotion.finish import finish
from vgg_cli.training.run import TrainResult, resume_training, run_training


def train(cfg: Config, *, role: tuple[int, int] | None = None, if_changed: bool = False) -> TrainResult:
    """Train a new run (or, with ``if_changed``, resume an unfinished one or do nothing) and finish it. ``role``:
    this process's place in a multi-process job (``vgg_cli.platform.distribute.process_role``), else None."""
    return complete(run_training(cfg, role=role, if_changed=if_changed))


def resume(run_dir: Path, role: tuple[int, int] | None = None, overrides: tuple[str, ...] = ()) -> TrainResult:
    """Continue an unfinished run from its last committed epoch, or finish one that trained to its end.
    ``overrides``: KEY=VALUE of ``vgg_cli.training.RESUME_OVERRIDES`` (where things are written)."""
    return complete(resume_training(run_dir, role, overrides))


def complete(result: TrainResult) -> TrainResult:
    """Finish a trained run (steps 2-5 of ``vgg_cli.promotion.finish``); anything else comes back as it is."""
    f = result.to_finish
    if f is None:
        return result
    handler = attach_log_file(f.paths.log, None) if f.chief else None  # the decision belongs in train.log too
    try:
        summary = finish(f.cfg, f.paths, f.index, result.summary, f.best, chief=f.chief)
    except KeyboardInterrupt as e:
        text = (f"stopped by {signal_name(e)} while finishing run {f.paths.name} (its evaluation, promotion or "
                f"report); it is trained and kept, and its promotion is decided and applied exactly once: finish "
                f"it with vgg train --resume {f.paths.root}")
        logging.getLogger("vgg").warning(text, extra={"console": False})
        raise InterruptedRun(text) from None
    finally:
        if handler is not None:
            detach_log_file(handler)
    return replace(result, summary=summary, to_finish=None)
