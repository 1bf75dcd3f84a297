"""The prepare and fit stages of a training run (a session opened once, ``vgg_cli.training.session``: scan ->
model -> fit -> run directory), and resuming one.

The config is read, never changed. Nothing is written until the dataset scan and the model build have
succeeded, so a bad dataset or weights path leaves no half-made run behind. One run at a time per runs
directory: the job (``vgg_cli.job.lifecycle.run``) holds the runs folder's lock (``RunsRoot.lock``) around all of
this, except in a multi-worker job's other workers, which never write there. Every epoch is committed as described
in ``vgg_cli.training.checkpoints``, so a run killed at any moment can be resumed with ``vgg train --resume``.
SIGINT/SIGTERM stop at the next batch boundary.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import keras

from vgg_cli.config.digest import config_digest
from vgg_cli.config.schema import AUTO, Config, head_norm_of, load_run_config
from vgg_cli.data.index import DatasetIndex
from vgg_cli.data.scan import require_dir
from vgg_cli.errors import ConfigError, DataError, InterruptedRun, NoInputError, TrainingDiverged
from vgg_cli.fsio import write_json, write_text
from vgg_cli.model.weights import copy_head
from vgg_cli.runs.root import LATEST, PRODUCTION, RunsRoot
from vgg_cli.runs.rundir import RunDir
from vgg_cli.runs.summary import PENDING, Outcome, RunStatus, Summary
from vgg_cli.training.callbacks import EarlyLog, attach_log_file, detach_log_file
from vgg_cli.training.checkpoints import TrainState, finalize, read_state
from vgg_cli.training.fit import FitOutcome, fit
from vgg_cli.training.health import diverged_error
from vgg_cli.training.nightly import latest_summary, unchanged, unfinished_same_job
from vgg_cli.training.prepare import feature_drift, night_drift
from vgg_cli.training.reread import moved, readable_summary, run_info_of
from vgg_cli.training.result import ToFinish, TrainResult
from vgg_cli.training.session import Session, check_can_train, open_session
from vgg_cli.training.summarise import build_summary, now, phase_summary, plot_curves

log = logging.getLogger("vgg")

def run_training(cfg: Config, runs: RunsRoot, *, role: tuple[int, int] | None = None,
                 if_changed: bool = False, index: DatasetIndex | None = None) -> TrainResult:
    """Train a new run in ``runs`` (the runs folder of ``cfg``, built once by the caller), or, with ``if_changed``,
    do nothing when data and config match the latest run. ``role``: (processes, this process) of a multi-process
    job (``vgg_cli.platform.distribute.process_role``), else None. ``index``: the dataset, when the caller scanned
    it already (``vgg_cli.training.nightly.nothing_to_do``)."""
    t_start = time.perf_counter()
    early = EarlyLog()
    log.addHandler(early)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        require_dir(cfg.data.train_dir, "data.train_dir")  # cheap checks before waiting on anything
        if role is not None and role[1] > 0:
            if if_changed:
                raise ConfigError("--if-changed is not supported with train.distribute=multi_worker (the workers "
                                  "would have to agree on skipping); run the multi-worker job without it")
            return _worker_run(cfg, runs, early, t_start, role)
        unfinished = unfinished_same_job(cfg, runs) if if_changed else None
        set_aside = None
        if unfinished is not None:
            try:
                return _resume(moved(load_run_config(unfinished.config), unfinished.root), runs, unfinished,
                               t_start, early)
            except (DataError, NoInputError, ConfigError) as e:  # a damaged or gone part: never every night again
                set_aside = runs.set_aside(unfinished, str(e))
                log.warning("set aside unfinished run %s, which cannot be resumed (%s); training a new run",
                            unfinished.name, set_aside["reason"])
        return _new_run(cfg, runs, early, t_start, if_changed=if_changed, set_aside=set_aside,
                        index=None if set_aside else index)
    finally:
        log.removeHandler(early)
        keras.mixed_precision.set_global_policy(previous_policy)  # a run's precision does not leak into the caller


def _worker_run(cfg: Config, runs: RunsRoot, early, t_start: float, role: tuple[int, int]) -> TrainResult:
    """A multi-worker job's non-chief worker: the same training, step for step (its collectives pair with the
    chief's), but everything it writes goes to a scratch folder that is removed at the end; it reads the real
    output.dir only for what must match the chief (the sticky split of runs/latest, a warm-start run)."""

    workers, worker = role
    scratch = Path(tempfile.mkdtemp(prefix=f"vgg-worker{worker}-"))
    try:
        output = cfg.output.model_copy(update={"dir": str(scratch), "name": "worker", "keep": None})
        cache = cfg.cache.model_copy(update={"dir": str(scratch / "features")})
        local = cfg.model_copy(update={"output": output, "cache": cache})
        log.info("worker %d of %d: training with the chief (which writes the run directory); scratch folder %s",
                 worker, workers, scratch)
        result = _new_run(local, RunsRoot(scratch), early, t_start, chief=False, reads=runs)
        return TrainResult(Outcome.WORKER_DONE, runs.path, replace(result.summary, promotion=None))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _new_run(cfg: Config, runs: RunsRoot, early, t_start: float, *, if_changed: bool = False,
             chief: bool = True, set_aside: dict | None = None, reads: RunsRoot | None = None,
             index: DatasetIndex | None = None) -> TrainResult:
    started = now()
    requested_weights = cfg.model.weights
    digest = config_digest(cfg)  # of the config as asked (weights: production), so a new production is no change
    dataset_name = Path(cfg.data.train_dir).name  # (the dataset's own name, not the train/ of a split layout)
    # a skipped night needs neither a free name nor weights: checked after the scan, when it is not skipped
    session = open_session(cfg, runs, chief, fail_fast=() if if_changed else ("name", "weights"), reads=reads,
                           index=index)
    cfg, index, device = session.cfg, session.index, session.device
    if device.distribute == "multi_worker" and device.is_chief != chief:
        raise ConfigError(f"the job's environment (TF_CONFIG or KERAS_DISTRIBUTION_*) changed while vgg started "
                          f"(process {device.worker}); start the job again")
    if if_changed:
        same = unchanged(runs, index, digest)
        if same is not None:
            return same
        log.info("dataset or config changed since the latest run: training" if latest_summary(runs) else
                 "no earlier finished run: training")
        check_can_train(cfg, runs)
    t_scanned = time.perf_counter()
    drift = night_drift(cfg, runs, index) if chief else None  # after --if-changed: an unchanged night reads no image

    model, state, weights_source = session.start(None)
    if requested_weights in (PRODUCTION, LATEST):
        weights_source = f"{requested_weights}: {weights_source}" + copy_head(model, Path(cfg.model.weights))
    norm = head_norm_of(cfg)
    log.info("backbone %s, weights: %s, frozen blocks: %s; head: %s pooling, %s%s; %s", cfg.model.arch,
             weights_source, cfg.model.freeze_blocks or "none", cfg.model.head.pooling,
             {"none": "no normalisation", "standard": "standardised features",
              "batch": "batch-normalised features"}[norm],
             " (auto)" if cfg.model.head.norm == AUTO else "", session.plan.phases[0].describe())
    t_built = time.perf_counter()

    paths = runs.new_run(cfg.output.name, dataset_name)
    handler = attach_log_file(paths.log, early)
    try:
        log.info("run directory %s", paths.root)
        write_text(paths.config, cfg.to_yaml())
        write_json(paths.classes, index.classes)
        write_json(paths.data, index.manifest())
        run_info = {"seq": runs.next_seq(), "started": started, "weights": weights_source, "head_norm": norm,
                    "config_digest": digest,
                    "timings": {"scan_s": round(t_scanned - t_start, 2), "build_s": round(t_built - t_scanned, 2)},
                    "resumed": [], "drift": drift, **({"set_aside": [set_aside]} if set_aside else {})}
        write_json(paths.info, run_info)
        return _fit_and_summarise(session.with_run(paths), model, state, run_info, t_start)
    finally:
        detach_log_file(handler)


def resume_training(run_dir: Path, runs: RunsRoot, role: tuple[int, int] | None = None,
                    overrides: tuple[str, ...] = (), run_cfg: Config | None = None) -> TrainResult:
    """Continue an unfinished run from its last committed epoch, with its own config and file list, in its place
    now (a run directory copied elsewhere writes there; ``runs``: the folder it sits in, built once by the
    caller). ``role``: as for ``run_training``; a multi-process job is not resumed. ``overrides``: KEY=VALUE of
    the keys that only say where things go (``vgg_cli.training.RESUME_OVERRIDES``); ``run_cfg``: the run's
    config.yaml when the caller read it already."""
    t_start = time.perf_counter()
    paths = RunDir(Path(run_dir))
    if not paths.config.is_file() or not paths.data.is_file():
        raise NoInputError(f"{str(run_dir)!r} is not a vgg run directory (no config.yaml/data.json); "
                           f"pass a run directory to --resume")
    cfg = moved(run_cfg or load_run_config(paths.config), paths.root, overrides)
    if role is not None:
        raise ConfigError("--resume is not supported for a multi-process job (TF_CONFIG or KERAS_DISTRIBUTION_* "
                          f"with train.distribute={cfg.train.distribute}); start the job again (a run with "
                          "train.distribute=auto can also be resumed by one process without those variables)")
    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _resume(cfg, runs, paths, t_start)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _resume(cfg: Config, runs: RunsRoot, paths: RunDir, t_start: float, early: EarlyLog | None = None) -> TrainResult:
    handler = attach_log_file(paths.log, early)
    try:
        summary = readable_summary(paths)
        status = summary.status if summary else None
        finishing = summary is not None and summary.needs_finishing
        if status == RunStatus.DIVERGED:
            d = summary.health.get("diverged") or {}
            raise TrainingDiverged(f"run {paths.root.name} diverged ({d.get('what', 'non-finite numbers')}) and is "
                                   f"not resumed: it would diverge again; start a new run with a lower "
                                   f"train.optimizer.learning_rate (or auto)")
        if status not in (None, RunStatus.INTERRUPTED) and not finishing:
            log.info("run %s already finished (%s): nothing to resume", paths.root.name, status.value)
            return TrainResult(Outcome.NOTHING_TO_DO, paths.root, summary)
        session = open_session(cfg, runs, run=paths)
        state = read_state(paths)
        if finishing:
            log.info("run %s trained all its epochs but was stopped before its promotion was carried out: "
                     "finishing it", paths.root.name)
            return TrainResult(Outcome.TRAINED, paths.root, summary, ToFinish(session, state.best if state else None))
        run_info = run_info_of(cfg, paths)
        model, state, _ = session.start(state)
        run_info["resumed"].append({"at": now(), "after_epoch": state.epoch})
        write_json(paths.info, run_info)
        return _fit_and_summarise(session, model, state, run_info, t_start)
    finally:
        detach_log_file(handler)


def _fit_and_summarise(session: Session, model: keras.Model, state: TrainState, run_info: dict,
                       t_start: float) -> TrainResult:
    cfg, index, plan, paths, device = session.cfg, session.index, session.plan, session.paths, session.device
    outcome = FitOutcome()
    if state.epoch < state.epochs and not state.stopped_early:
        with device.scope():
            outcome = fit(session, model, state)
    finalize(paths, state, model)  # best.keras and last.keras from light checkpoints, once per session
    log.debug("training finished; writing the summary")
    summary = Summary.parse(build_summary(cfg, index, model, device, state, run_info, outcome, t_start))
    summary.input = next(iter(outcome.inputs.values()), None)  # what fed the first phase this session trained
    summary.drift = feature_drift(cfg, session.runs, index, summary.drift, summary.input)  # + the frozen features
    summary.phases = phase_summary(plan, state, outcome.inputs)
    weights = plan.class_weight
    summary.class_weight = None if weights is None else {index.classes[i]: w for i, w in weights.items()}
    summary.run = paths.root.name
    summary.task = plan.task.name
    if run_info.get("set_aside"):  # the night's summary names what it set aside
        summary.set_aside = run_info["set_aside"]
    if outcome.diverged is not None:
        summary.promotion = {"promoted": False, "applied": True,
                                "reason": f"training diverged: {outcome.diverged.what}"}
    elif not outcome.stopped_by and device.is_chief:
        summary.promotion = dict(PENDING)  # finish() decides; a kill from here on is finished by --resume
    paths.write_summary(summary)
    plot_curves(paths, state, summary.monitor)
    if outcome.stopped_by:
        raise _interrupted(paths, state, outcome.stopped_by)
    if outcome.diverged is not None:
        phase = plan.phases[state.phase_index]
        raise diverged_error(paths, summary.health, phase.learning_rate, phase.auto_rate, phase.number)
    best = state.best
    if best is not None:
        log.info("done: best %s %.4f at epoch %d of %d; model in %s", summary.monitor, best[summary.monitor],
                 best["epoch"], summary.epochs_run, paths.best)
    if summary.health_status == "stalled":  # said at the end too, where a reader of the last lines looks
        log.warning("health: stalled: %s", (summary.health or {}).get("warning") or "see docs/health.md")
    return TrainResult(Outcome.TRAINED, paths.root, summary, ToFinish(session, best))


def _interrupted(paths: RunDir, state: TrainState, why: str) -> InterruptedRun:
    if state.epoch == 0:
        text = (f"training stopped by {why} before the first epoch finished; resume with: "
                f"vgg train --resume {paths.root}")
    else:
        text = (f"training stopped by {why} after epoch {state.epoch}; {paths.last} holds epoch {state.epoch} and "
                f"{paths.best} epoch {state.best_epoch}; {LATEST} was not moved; resume with: "
                f"vgg train --resume {paths.root}")
    log.warning(text, extra={"console": False})  # for train.log: the console gets it once, as the error line
    return InterruptedRun(text)


