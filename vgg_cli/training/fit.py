"""Fitting a run's epochs, phase by phase, with its callbacks (signals, progress, checkpoints, health)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import keras

from vgg_cli.data.features import prune_cache
from vgg_cli.data.pipeline import close_batches, eval_batches, raise_source_failure, train_batches
from vgg_cli.platform.device import peak_rss_mib
from vgg_cli.platform.distribute import in_multi_worker_scope
from vgg_cli.platform.keras_fixes import multi_worker_fit_fixes
from vgg_cli.training.callbacks import EpochScalars, ProgressBar, Stop, StopOnSignal
from vgg_cli.training.checkpoints import Monitor, RunRecorder, TrainState
from vgg_cli.training.health import Baseline, Diverged, HealthCheck, HealthRecord
from vgg_cli.training.inputs import input_plan
from vgg_cli.training.plan import Phase, set_up_phase, steps_per_epoch
from vgg_cli.training.session import Session

log = logging.getLogger("vgg")


@dataclass
class FitOutcome:
    """How a session's training ended: a signal (``stopped_by``), divergence, or neither (all epochs ran)."""
    stopped_by: str | None = None
    seconds: float = 0.0
    inputs: dict = field(default_factory=dict)  # {phase number: what fed it}
    health: HealthRecord = field(default_factory=HealthRecord)
    diverged: Diverged | None = None


def fit(session: Session, model: keras.Model, state: TrainState) -> FitOutcome:
    """Train epochs state.epoch .. epochs-1, phase by phase, watching the run's health (vgg_cli.training.health),
    into the session's run directory."""
    cfg, index, plan = session.cfg, session.index, session.plan
    phases = plan.phases
    stopper = StopOnSignal()
    t0 = time.perf_counter()
    out = FitOutcome()
    # the phase the model is set up for: a new run's or a checkpoint's (its trainable flags and optimizer)
    configured = state.rows[-1].get("phase", 1) if state.rows else 1
    weights = plan.class_weight
    if weights is not None:
        log.info("class weights: %s", ", ".join(f"{index.classes[i]} {w:.3g}" for i, w in weights.items()))
    with stopper:
        try:
            while state.epoch < state.epochs and not state.stopped_early:
                i = state.phase_index
                phase = phases[i]
                if phase.number != configured:
                    set_up_phase(model, cfg, plan, phase)
                    configured = phase.number
                if len(phases) > 1:
                    log.info("%s (epochs %d-%d)", phase.describe(), state.phase_start(i) + 1, state.phase_ends[i])
                out.inputs[phase.number] = _fit_phase(session, model, state, phase, stopper, out.health)
        except Stop as e:
            out.stopped_by = str(e)
        except KeyboardInterrupt:
            out.stopped_by = stopper.signal_name or "SIGINT"
        except Diverged as e:
            out.diverged = e
            out.health.status = "diverged"
            out.health.diverged = {"epoch": e.epoch, "what": e.what, "kept_epoch": state.epoch}
    out.seconds = time.perf_counter() - t0
    return out


@contextmanager
def _source_errors(source):
    """An image removed during the run stops it with its own one line (tf.data turns it into a framework error)."""

    try:
        yield
    except Exception:
        raise_source_failure(source)
        raise


def _fit_phase(session: Session, model: keras.Model, state: TrainState, phase: Phase, stopper: StopOnSignal,
               health: HealthRecord) -> dict:
    """Fit the rest of one phase (to state.phase_ends[phase]); returns the input description."""
    cfg, index, paths, weights = session.cfg, session.index, session.paths, session.plan.class_weight
    bs, seed = cfg.train.batch_size, cfg.train.seed
    end = state.phase_ends[phase.number - 1]
    plan = train_ds = val_ds = None
    try:
        plan = input_plan(session, model, stopper.check, phase.frozen_blocks)
        log.info("input: %s", plan.info["description"])
        train_ds = train_batches(plan.source, plan.train_ids, plan.labels, bs, seed, state.epoch, end, weights)
        val_ds = eval_batches(plan.source, plan.val_ids, plan.labels, bs, repeat=True) if plan.val_ids else None
        if val_ds is None and phase.number == 1:
            log.warning("no validation images (data.val_split=0 and no data.val_dir): best model chosen on "
                        "training metrics")
        monitor = Monitor(cfg.train.monitor, has_val=val_ds is not None)
        steps = steps_per_epoch(len(plan.train_ids), bs)
        baseline = Baseline.of(plan.labels[plan.train_ids], plan.labels[plan.val_ids], len(index.classes),
                               cfg.train.label_smoothing)
        checker = HealthCheck(baseline, health, phase.learning_rate, phase.auto_rate, has_val=val_ds is not None,
                              phase=phase.number, head_only=len(phase.frozen_blocks) == 5)
        if not health.replayed and state.rows:
            checker.replay(state.rows)  # a resumed run: the epochs before this session count too
        health.replayed = True
        callbacks: list = [stopper, checker, RunRecorder(paths, state, monitor, cfg.train.early_stopping_patience,
                                                len(plan.train_ids), save_model=model, phase=phase.number)]
        val_steps = steps_per_epoch(len(plan.val_ids), bs) if val_ds is not None else None
        callbacks.insert(2, ProgressBar(state.epochs, steps, bs, val_steps=val_steps or 0))
        if cfg.output.tensorboard and EpochScalars.available():
            callbacks.append(EpochScalars(paths.tensorboard))
        elif cfg.output.tensorboard and phase.number == 1:
            log.warning("output.tensorboard: TensorFlow is not installed, so no TensorBoard logs are written "
                        "(metrics.csv and curves.png have the same numbers); set output.tensorboard=false to "
                        "silence this")
        fixes = multi_worker_fit_fixes(plan, weights is not None) if in_multi_worker_scope() else nullcontext()
        with fixes, _source_errors(plan.source):
            plan.fit_model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=state.epoch,
                               steps_per_epoch=steps, callbacks=callbacks, shuffle=False, verbose=0,
                               validation_steps=val_steps)
        log.debug("fit returned (peak RSS %s MiB)", peak_rss_mib())
    finally:
        for batches in (train_ds, val_ds):
            close_batches(batches)
        if plan is not None:
            plan.source.close()
            if plan.cache_root is not None:
                removed = prune_cache(plan.cache_root, cfg.cache.disk_mb * 2**20, plan.cache_entries)
                if removed:
                    log.info("feature cache %s: removed %d least recently used entries (cache.disk_mb=%d)",
                             plan.cache_root, removed, cfg.cache.disk_mb)
    return plan.info
