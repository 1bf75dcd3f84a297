"""What training puts in summary.json (status, best and final epochs, health, data, timings, device and versions;
its per-phase record) and curves.png. The file's schema and its reader are ``vgg_cli.runs.summary``."""

from __future__ import annotations

import logging
import math
import platform
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import keras

from vgg_cli import __version__
from vgg_cli.config.schema import Config
from vgg_cli.data.index import DatasetIndex
from vgg_cli.reporting.plots import training_curves
from vgg_cli.runs.rundir import RunDir
from vgg_cli.runs.summary import RunStatus
from vgg_cli.training.checkpoints import Monitor, TrainState
from vgg_cli.training.plan import TrainingPlan
from vgg_cli.training.plan import n_train as count_train

log = logging.getLogger("vgg")



def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def versions() -> dict:
    out = {"vgg": __version__, "keras": keras.__version__, "python": platform.python_version(),
           "backend": keras.backend.backend()}
    for name in {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(out["backend"], []):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def phase_summary(plan: TrainingPlan, state: TrainState, inputs: dict) -> list[dict]:
    out = []
    for phase in plan.phases:
        ran = [r["epoch"] for r in state.rows if r.get("phase", 1) == phase.number]
        out.append({"phase": phase.number, "frozen_blocks": list(phase.frozen_blocks),
                    "learning_rate": phase.learning_rate, "learning_rate_auto": phase.auto_rate,
                    "epochs_planned": phase.epochs,
                    "epochs": [ran[0], ran[-1]] if ran else None, "input": inputs.get(phase.number)})
    return out


def plot_curves(paths: RunDir, state: TrainState, monitor: str) -> None:
    """<run>/curves.png: loss and accuracy per epoch. A picture that cannot be drawn is not worth failing a run."""
    if not state.rows:
        return
    try:
        training_curves(state.rows, paths.curves, best_epoch=state.best_epoch, monitor=monitor)
    except ImportError as e:
        log.warning("no training curves picture: %s", e)


def build_summary(cfg: Config, index: DatasetIndex, model: keras.Model, device, state: TrainState, run_info: dict,
             outcome, t_start: float) -> dict:
    n_train = count_train(index)
    n_val = len(index.files) - n_train
    has_val = n_val > 0
    stopped_by, train_s = outcome.stopped_by, outcome.seconds
    if outcome.diverged is not None:
        status = RunStatus.DIVERGED
    elif stopped_by:
        status = RunStatus.INTERRUPTED
    else:
        status = RunStatus.EARLY_STOPPED if state.stopped_early else RunStatus.FINISHED
    seconds = sum(r["seconds"] for r in state.rows)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return {
        "status": status.value,
        "stopped_by": stopped_by,
        "epochs_run": state.epoch,
        "epochs_planned": state.epochs,
        "monitor": Monitor(cfg.train.monitor, has_val).name,
        "best": state.best,
        "final": state.rows[-1] if state.rows else None,
        "health": outcome.health.to_dict(),
        "classes": index.classes,
        "counts": index.counts(),
        "images": {"train": n_train, "val": n_val, "skipped": len(index.skipped)},
        "fingerprint": index.fingerprint,
        "config_digest": run_info["config_digest"],
        "weights": run_info["weights"],
        "params": {"total": int(model.count_params()), "trainable": trainable},
        "started": run_info["started"],
        "finished": now(),
        "resumed": run_info["resumed"],
        "timings": {**run_info["timings"], "epochs_s": round(seconds, 2), "this_session_train_s": round(train_s, 2),
                    "this_session_total_s": round(time.perf_counter() - t_start, 2),
                    "images_per_sec": round(n_train * len(state.rows) / seconds, 2) if seconds > 0 else None},
        "device": device.to_dict(),
        "versions": versions(),
        "drift": run_info.get("drift"),  # tonight's new images against the previous run's (None: not asked)
    }

