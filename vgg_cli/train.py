"""A training run: scan -> model -> fit -> run directory; and resuming one.

The config is read, never changed. Nothing is written until the dataset scan and the model build have
succeeded, so a bad dataset or weights path leaves no half-made run behind. One run at a time per runs
directory (``runs/.lock``). Every epoch is committed as described in ``vgg_cli.checkpoints``, so a run killed at
any moment can be resumed with ``vgg train --resume``. SIGINT/SIGTERM stop at the next batch boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from vgg_cli import __version__
from vgg_cli.callbacks import EpochScalars, ProgressBar, StopOnSignal, _EarlyLog, _RunLog, _Stop
from vgg_cli.checkpoints import Monitor, RunRecorder, TrainState, load_checkpoint, read_state, sync
from vgg_cli.config import AUTO, Config, auto_learning_rate, load_run_config
from vgg_cli.data.scan import (TRAIN, VAL, DatasetIndex, check_layout, index_from_manifest, previous_splits_from,
                               require_dir, scan)
from vgg_cli.device import peak_rss_mib, setup_devices
from vgg_cli.distribute import in_multi_worker_scope, local_predictor, worker_role
from vgg_cli.errors import (ArtifactIOError, ConfigError, DataError, InterruptedRun, NoInputError,
                            TrainingDiverged)
from vgg_cli.finish import PENDING, diverged_error, finish
from vgg_cli.health import Baseline, Diverged, HealthCheck, HealthRecord
from vgg_cli.model import (apply_freeze, backbone_of, build_model, check_weights_available, compile_model,
                           copy_head_if_compatible, learning_rate_for)
from vgg_cli.promote import PRODUCTION
from vgg_cli.runs import (LATEST, RunPaths, check_run_name_free, find_resumable, needs_finishing, new_run_dir,
                          read_json, runs_lock, write_json, write_text)

log = logging.getLogger("vgg")

# Outcomes of `vgg train` (summary.json "status" and --json "status").
TRAINED, NOTHING_TO_DO, INTERRUPTED = "trained", "nothing_to_do", "interrupted"
DIVERGED = "diverged"  # summary.json status of a run stopped by non-finite numbers (vgg_cli.health)
WORKER_DONE = "worker_done"  # a multi-worker job's non-chief worker finished; the chief wrote the run
# --if-changed resumes an unfinished run at most this many times, so a run that keeps crashing cannot block
# every later night.
MAX_AUTO_RESUMES = 3


@dataclass
class TrainResult:
    status: str
    run_dir: Path
    summary: dict

    @property
    def promoted(self) -> bool | None:
        """None when no promotion decision was made (nothing trained)."""
        promotion = self.summary.get("promotion")
        return None if promotion is None or self.status != TRAINED else bool(promotion.get("promoted"))


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class Phase:
    """One stretch of training with fixed frozen blocks, its own optimizer and learning rate."""
    number: int  # 1-based
    epochs: int
    frozen_blocks: tuple[int, ...]
    learning_rate: float

    auto_rate: bool = False  # the rate was chosen by train.optimizer.learning_rate=auto

    def describe(self) -> str:
        frozen = ", ".join(map(str, self.frozen_blocks)) or "none"
        auto = " (auto)" if self.auto_rate else ""
        return f"phase {self.number}: frozen blocks {frozen}, learning rate {self.learning_rate:g}{auto}"


def plan_phases(cfg: Config) -> list[Phase]:
    """Phase 1 with model.freeze_blocks; phase 2 (finetune.epochs > 0) with finetune.unfreeze_blocks trainable.
    Phase 1's rate is train.optimizer.learning_rate, or with ``auto`` the one that fits what trains."""
    rate = cfg.train.optimizer.learning_rate
    auto = rate == AUTO
    if auto:
        rate = auto_learning_rate(cfg.model.freeze_blocks)
    phases = [Phase(1, cfg.train.epochs, tuple(cfg.model.freeze_blocks), rate, auto)]
    if cfg.finetune.epochs > 0:
        frozen = tuple(b for b in cfg.model.freeze_blocks if b not in cfg.finetune.unfreeze_blocks)
        phases.append(Phase(2, cfg.finetune.epochs, frozen, cfg.finetune.learning_rate))
    return phases


def new_state(cfg: Config) -> TrainState:
    ends, total = [], 0
    for phase in plan_phases(cfg):
        total += phase.epochs
        ends.append(total)
    return TrainState(epochs=total, phase_ends=ends)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return -(-n_train // batch_size)


def set_up_phase(model: keras.Model, cfg: Config, phase: Phase, n_train: int, n_classes: int) -> None:
    """Freeze the phase's blocks (everything else in the backbone trainable) and compile with a new optimizer at
    the phase's learning rate and schedule. Changing ``trainable`` needs this recompile (keras.io guide)."""
    apply_freeze(backbone_of(model), phase.frozen_blocks)
    rate = learning_rate_for(cfg.train.schedule, phase.learning_rate, phase.epochs,
                             steps_per_epoch(n_train, cfg.train.batch_size))
    compile_model(model, cfg.train, n_classes, learning_rate=rate)


def class_weights(cfg: Config, index: DatasetIndex) -> dict[int, float] | None:
    """train.class_weight as {label: weight}; balanced = n / (n_classes * n_of_class) over the training split."""
    wanted = cfg.train.class_weight
    if wanted is None:
        return None
    counts = index.counts()
    if wanted == "balanced":
        n = sum(c[TRAIN] for c in counts.values())
        # a class with no training image (all of it held out) never reaches the loss; its weight is moot
        return {i: n / (len(index.classes) * counts[c][TRAIN]) if counts[c][TRAIN] else 1.0
                for i, c in enumerate(index.classes)}
    unknown = sorted(set(wanted) - set(index.classes))
    if unknown:
        raise ConfigError(f"train.class_weight names {unknown}, which are not classes of this dataset "
                          f"(classes: {index.classes}); use the class folder names, or balanced")
    return {i: float(wanted.get(c, 1.0)) for i, c in enumerate(index.classes)}


def _n_train(index: DatasetIndex) -> int:
    return sum(1 for e in index.files if e.split == TRAIN)


def config_digest(cfg: Config) -> str:
    """What makes two trainings the same job: the resolved config without the sections that do not change the
    result (output, cache)."""
    d = cfg.to_dict()
    d.pop("output", None)
    d.pop("cache", None)
    if d["train"].get("backend") == "auto":  # (the key came later: runs from before it keep their digest)
        d["train"].pop("backend")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _attach_log_file(path: Path, early: _EarlyLog | None) -> logging.Handler:
    try:
        handler = _RunLog(path, encoding="utf-8")  # appends: a resumed run continues the same log
    except OSError as e:
        raise ArtifactIOError(f"could not write {str(path)!r}: {e.strerror}; free space or fix permissions and "
                              f"run again") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if early is not None:
        log.removeHandler(early)
        for record in early.records:
            handler.handle(record)
    log.addHandler(handler)
    return handler


def _previous_splits(cfg: Config) -> dict[str, str]:
    manifest = Path(cfg.output.dir) / LATEST / "data.json"
    if not manifest.is_file():
        return {}
    try:
        return previous_splits_from(json.loads(manifest.read_text(encoding="utf-8")), cfg.data)
    except (OSError, ValueError):
        log.warning("could not read %s; splitting without it", manifest)
        return {}


def _versions() -> dict:
    out = {"vgg": __version__, "keras": keras.__version__, "python": platform.python_version(),
           "backend": keras.backend.backend()}
    for name in {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(out["backend"], []):
        from importlib.metadata import PackageNotFoundError, version

        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _log_scan(index: DatasetIndex) -> None:
    counts = index.counts()
    n_train = sum(c[TRAIN] for c in counts.values())
    n_val = sum(c[VAL] for c in counts.values())
    log.info("dataset %s: %d classes, %d train + %d val images, %d skipped", index.train_dir, len(index.classes),
             n_train, n_val, len(index.skipped))
    for s in index.skipped[:20]:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    if len(index.skipped) > 20:
        log.warning("... and %d more skipped files (all listed in data.json)", len(index.skipped) - 20)
    for c in index.excluded_classes:
        log.warning("class folder %r left out: %s", c["class"], c["reason"])


def run_training(cfg: Config, *, if_changed: bool = False, command: str = "") -> TrainResult:
    """Train a new run (or, with ``if_changed``, do nothing when data and config match the latest run)."""
    t_start = time.perf_counter()
    early = _EarlyLog()
    log.addHandler(early)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        require_dir(cfg.data.train_dir, "data.train_dir")  # cheap checks before waiting on anything
        role = worker_role(cfg.train.distribute)
        if role is not None and role[1] > 0:
            if if_changed:
                raise ConfigError("--if-changed is not supported with train.distribute=multi_worker (the workers "
                                  "would have to agree on skipping); run the multi-worker job without it")
            return _worker_run(cfg, early, t_start, role)
        runs_dir = Path(cfg.output.dir)
        with runs_lock(runs_dir, command) as stale:
            if stale:
                log.warning("took over the lock of a vgg run that is no longer running (%s)", stale)
            unfinished = _unfinished_same_job(cfg) if if_changed else None
            if unfinished is not None:
                return _resume(load_run_config(unfinished.config), unfinished, t_start, early)
            return _new_run(cfg, early, t_start, if_changed)
    finally:
        log.removeHandler(early)
        keras.mixed_precision.set_global_policy(previous_policy)  # a run's precision does not leak into the caller


def _worker_run(cfg: Config, early, t_start: float, role: tuple[int, int]) -> TrainResult:
    """A multi-worker job's non-chief worker: the same training, step for step (its collectives pair with the
    chief's), but everything it writes goes to a scratch folder that is removed at the end; it reads the real
    output.dir only for what must match the chief (the sticky split of runs/latest, a warm-start run)."""
    import shutil
    import tempfile

    workers, worker = role
    cfg = _resolve_warm_start(cfg)
    previous = _previous_splits(cfg)
    scratch = Path(tempfile.mkdtemp(prefix=f"vgg-worker{worker}-"))
    try:
        output = cfg.output.model_copy(update={"dir": str(scratch), "name": "worker", "keep": None})
        cache = cfg.cache.model_copy(update={"dir": str(scratch / "features")})
        local = cfg.model_copy(update={"output": output, "cache": cache})
        log.info("worker %d of %d: training with the chief (which writes the run directory); scratch folder %s",
                 worker, workers, scratch)
        result = _new_run(local, early, t_start, False, previous_splits=previous, chief=False)
        return TrainResult(WORKER_DONE, Path(cfg.output.dir), {**result.summary, "promotion": None})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _latest_summary(runs_dir: Path) -> tuple[Path, dict] | None:
    link = runs_dir / LATEST
    try:
        return link.resolve(), json.loads((link / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _resolve_warm_start(cfg: Config) -> Config:
    """model.weights: production|latest -> that run directory in output.dir."""
    if cfg.model.weights not in (PRODUCTION, LATEST):
        return cfg
    link = Path(cfg.output.dir) / cfg.model.weights
    if not link.exists():
        raise NoInputError(f"model.weights={cfg.model.weights}: there is no {link} yet; train a first run with "
                           f"model.weights=imagenet (or none), or pass a run directory")
    model = cfg.model.model_copy(update={"weights": str(link.resolve())})
    return cfg.model_copy(update={"model": model})


def _new_run(cfg: Config, early, t_start: float, if_changed: bool, previous_splits: dict | None = None,
             chief: bool = True) -> TrainResult:
    started = _now()
    requested_weights = cfg.model.weights
    digest = config_digest(cfg)  # of the config as asked (weights: production), so a new production is no change
    cfg = _resolve_warm_start(cfg)
    if cfg.data.val_dir is not None:
        require_dir(cfg.data.val_dir, "data.val_dir")
    device = setup_devices(cfg.train, *_compile_cache(cfg))
    check_layout(cfg.data)  # a wrong layout is reported before anything slow or networked
    if not if_changed:
        check_run_name_free(Path(cfg.output.dir), cfg.output.name)  # fail fast, before a long scan
        check_weights_available(cfg.model)  # (a skipped run needs neither)
    if previous_splits is None:
        previous_splits = _previous_splits(cfg)
    index = scan(cfg.data, previous_splits=previous_splits, cache_dir=Path(cfg.output.dir) / ".cache")
    _log_scan(index)
    if device.distribute == "multi_worker" and device.is_chief != chief:
        raise ConfigError(f"the job's environment (TF_CONFIG or KERAS_DISTRIBUTION_*) changed while vgg started "
                          f"(process {device.worker}); start the job again")
    if if_changed:
        latest = _latest_summary(Path(cfg.output.dir))
        if latest and latest[1].get("fingerprint") == index.fingerprint and latest[1].get("config_digest") == digest:
            log.info("nothing to do: the dataset and the config are unchanged since run %s", latest[0].name)
            return TrainResult(NOTHING_TO_DO, latest[0], latest[1])
        log.info("dataset or config changed since the latest run: training" if latest else
                 "no earlier finished run: training")
        check_run_name_free(Path(cfg.output.dir), cfg.output.name)
        check_weights_available(cfg.model)
    t_scanned = time.perf_counter()

    keras.utils.set_random_seed(cfg.train.seed)
    _log_device(device, cfg)
    with device.scope():  # a distribution strategy's variables are made in its scope
        model, weights_source = build_model(cfg.model, cfg.data.image_size, index.classes, augment=cfg.augment)
        if requested_weights in (PRODUCTION, LATEST):
            weights_source = f"{requested_weights}: {weights_source}"
            if copy_head_if_compatible(model, Path(cfg.model.weights)):
                weights_source += " + its head (same classes)"
        set_up_phase(model, cfg, plan_phases(cfg)[0], _n_train(index), len(index.classes))
    log.info("backbone %s, weights: %s, frozen blocks: %s; %s", cfg.model.arch, weights_source,
             cfg.model.freeze_blocks or "none", plan_phases(cfg)[0].describe())
    t_built = time.perf_counter()

    paths = new_run_dir(Path(cfg.output.dir), cfg.output.name, Path(index.train_dir).name)
    handler = _attach_log_file(paths.log, early)
    try:
        log.info("run directory %s", paths.root)
        write_text(paths.config, cfg.to_yaml())
        write_json(paths.classes, index.classes)
        write_json(paths.data, index.manifest())
        run_info = {"started": started, "weights": weights_source, "config_digest": digest,
                    "timings": {"scan_s": round(t_scanned - t_start, 2), "build_s": round(t_built - t_scanned, 2)},
                    "resumed": []}
        write_json(paths.root / "run.json", run_info)
        state = new_state(cfg)
        return _fit_and_finish(cfg, index, model, paths, device, state, run_info, t_start)
    finally:
        log.removeHandler(handler)
        handler.close()


def _unfinished_same_job(cfg: Config) -> RunPaths | None:
    """Cron mode (--if-changed): the newest run that did not finish, if it is newer than runs/latest and was
    started with this same config. It is finished before anything new is trained."""
    runs_dir = Path(cfg.output.dir)
    try:
        candidate = find_resumable(runs_dir)
    except NoInputError:
        return None
    latest = runs_dir / LATEST
    if latest.exists() and latest.resolve().stat().st_mtime > candidate.stat().st_mtime:
        return None
    try:
        info = read_json(candidate / "run.json", "run info")
    except (DataError, NoInputError):
        return None
    if not isinstance(info, dict):
        return None
    if len(info.get("resumed", [])) >= MAX_AUTO_RESUMES:
        log.warning("not resuming unfinished run %s again: it was resumed %d times without finishing; training a "
                    "new run (resume it by hand with --resume to retry)", candidate.name, len(info["resumed"]))
        return None
    if info.get("config_digest") != config_digest(cfg):
        log.info("not resuming unfinished run %s: it was started with a different config", candidate.name)
        return None
    log.info("an earlier run of this job did not finish (%s): resuming it", candidate.name)
    return RunPaths(candidate)


def resume_training(run_dir: Path, command: str = "") -> TrainResult:
    """Continue an unfinished run from its last committed epoch, with its own config and file list."""
    t_start = time.perf_counter()
    paths = RunPaths(run_dir)
    if not paths.config.is_file() or not paths.data.is_file():
        raise NoInputError(f"{str(run_dir)!r} is not a vgg run directory (no config.yaml/data.json); "
                           f"pass a run directory to --resume")
    cfg = load_run_config(paths.config)
    if worker_role(cfg.train.distribute) is not None:
        raise ConfigError("--resume is not supported for a multi-process job (TF_CONFIG or KERAS_DISTRIBUTION_* "
                          f"with train.distribute={cfg.train.distribute}); start the job again (a run with "
                          "train.distribute=auto can also be resumed by one process without those variables)")
    previous_policy = keras.mixed_precision.global_policy()
    try:
        with runs_lock(paths.root.parent, command) as stale:
            if stale:
                log.warning("took over the lock of a vgg run that is no longer running (%s)", stale)
            return _resume(cfg, paths, t_start)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _readable_summary(paths: RunPaths) -> dict | None:
    """summary.json, or None when there is none yet or it is damaged (then state.json, the commit point, decides
    what is left to do, and the summary is written again)."""
    if not paths.summary.is_file():
        return None
    try:
        summary = read_json(paths.summary, "run summary")
        if not isinstance(summary, dict):
            raise DataError(f"run summary {str(paths.summary)!r} is not a JSON object")
        return summary
    except (DataError, NoInputError) as e:
        log.warning("%s; continuing from state.json and writing it again", e)
        return None


def _run_info(cfg: Config, paths: RunPaths) -> dict:
    """run.json (start time, weights, config digest), rebuilt with what is known when it is damaged."""
    try:
        info = read_json(paths.root / "run.json", "run info")
        if isinstance(info, dict) and isinstance(info.get("resumed"), list):
            return info
        log.warning("run info %s is not what vgg writes; rebuilding it", paths.root / "run.json")
    except (DataError, NoInputError) as e:
        log.warning("%s; rebuilding it", e)
    return {"started": None, "weights": "unknown (run.json was damaged)", "config_digest": config_digest(cfg),
            "timings": {}, "resumed": []}


def _load_index(paths: RunPaths) -> DatasetIndex:
    manifest = read_json(paths.data, "run manifest")
    try:
        index = index_from_manifest(manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"run manifest {str(paths.data)!r} is damaged ({type(e).__name__}: {e}); the run cannot be "
                        f"resumed: start a new run") from None
    missing = [e.path for e in index.files if not (index.root_of(e) / e.path).is_file()]
    if missing:
        raise DataError(f"cannot resume {paths.root.name}: {len(missing)} of its images are gone "
                        f"(e.g. {missing[0]!r}); start a new run instead")
    return index


def _resume(cfg: Config, paths: RunPaths, t_start: float, early: _EarlyLog | None = None) -> TrainResult:
    handler = _attach_log_file(paths.log, early)
    try:
        summary = _readable_summary(paths)
        status = summary.get("status") if summary else None
        if needs_finishing(summary):
            log.info("run %s trained all its epochs but was stopped before its promotion was carried out: "
                     "finishing it", paths.root.name)
            state = read_state(paths)
            summary = finish(cfg, paths, _load_index(paths), summary, state.best if state else None)
            return TrainResult(TRAINED, paths.root, summary)
        if status == DIVERGED:
            d = (summary.get("health") or {}).get("diverged") or {}
            raise TrainingDiverged(f"run {paths.root.name} diverged ({d.get('what', 'non-finite numbers')}) and is "
                                   f"not resumed: it would diverge again; start a new run with a lower "
                                   f"train.optimizer.learning_rate (or auto)")
        if status not in (None, INTERRUPTED):
            log.info("run %s already finished (%s): nothing to resume", paths.root.name, status)
            return TrainResult(NOTHING_TO_DO, paths.root, summary)
        index = _load_index(paths)
        device = setup_devices(cfg.train, *_compile_cache(cfg))
        state = read_state(paths)
        run_info = _run_info(cfg, paths)
        _log_device(device, cfg)
        model, state = _model_to_resume(cfg, paths, index, device, state)
        run_info["resumed"].append({"at": _now(), "after_epoch": state.epoch})
        write_json(paths.root / "run.json", run_info)
        return _fit_and_finish(cfg, index, model, paths, device, state, run_info, t_start)
    finally:
        log.removeHandler(handler)
        handler.close()


def _model_to_resume(cfg: Config, paths: RunPaths, index: DatasetIndex, device, state: TrainState | None):
    """(model, state) to continue from: the committed checkpoint, or a new model when no epoch was completed."""
    if state is None:
        log.info("resuming %s from the start: no epoch was completed", paths.root.name)
        keras.utils.set_random_seed(cfg.train.seed)
        with device.scope():
            model, _ = build_model(cfg.model, cfg.data.image_size, index.classes, augment=cfg.augment)
            set_up_phase(model, cfg, plan_phases(cfg)[0], _n_train(index), len(index.classes))
        return model, new_state(cfg)
    sync(paths, state)  # repair anything a crash between commit and sync left behind
    log.info("resuming %s after epoch %d of %d (best: epoch %s)", paths.root.name, state.epoch, state.epochs,
             state.best_epoch)
    keras.utils.set_random_seed(cfg.train.seed + state.epoch)
    with device.scope():
        model = load_checkpoint(paths.checkpoint(state.epoch))
    return model, state


def _compile_cache(cfg: Config) -> tuple[Path, int]:
    """Where the JAX compile cache lives (unless JAX_COMPILATION_CACHE_DIR says) and its size cap."""
    return Path(cfg.output.dir) / ".cache" / "jax", cfg.cache.compile_mb


def _log_device(device, cfg: Config) -> None:
    log.info("backend %s, precision %s (%s)", device.backend, device.precision, device.note)
    if device.compile_cache is not None:
        c = device.compile_cache
        log.info("compile cache %s (%s)", c.dir, f"at most {c.max_mb} MiB" if c.max_mb else "not bounded by vgg")
    if device.distribute != "none":
        per = cfg.train.batch_size / device.replicas
        log.info("distribution: %s with %s, %d replicas (%s); global batch %d, about %.3g per replica; learning "
                 "rate as configured", device.distribute, device.engine, device.replicas, device.distribute_note,
                 cfg.train.batch_size, per)
        if device.backend == "jax":
            log.info("a batch whose size is not a multiple of %d is padded with weight-0 copies (JAX shards "
                     "evenly); its loss and gradient are the unpadded batch's", device.replicas)
        if cfg.train.batch_size < device.replicas:
            raise ConfigError(f"train.batch_size {cfg.train.batch_size} is smaller than the {device.replicas} "
                              f"replicas of train.distribute={device.distribute}; it is the global batch, split "
                              f"across replicas: set it to at least {device.replicas}")


def _fit_and_finish(cfg: Config, index: DatasetIndex, model: keras.Model, paths: RunPaths, device,
                    state: TrainState, run_info: dict, t_start: float) -> TrainResult:
    outcome = FitOutcome()
    if state.epoch < state.epochs and not state.stopped_early:
        with device.scope():
            outcome = _fit(cfg, index, model, paths, state)
    log.debug("training finished; writing the summary")
    summary = _summary(cfg, index, model, device, state, run_info, outcome, t_start)
    summary["input"] = next(iter(outcome.inputs.values()), None)  # what fed the first phase this session trained
    summary["phases"] = _phase_summary(cfg, state, outcome.inputs)
    weights = class_weights(cfg, index)
    summary["class_weight"] = None if weights is None else {index.classes[i]: w for i, w in weights.items()}
    summary["run"] = paths.root.name
    if outcome.diverged is not None:
        summary["promotion"] = {"promoted": False, "applied": True,
                                "reason": f"training diverged: {outcome.diverged.what}"}
    elif not outcome.stopped_by and device.is_chief:
        summary["promotion"] = dict(PENDING)  # finish() decides; a kill from here on is finished by --resume
    write_json(paths.summary, summary)
    _plot_curves(paths, state, summary["monitor"])
    if outcome.stopped_by:
        raise _interrupted(paths, state, outcome.stopped_by)
    if outcome.diverged is not None:
        phase = plan_phases(cfg)[state.phase_index]
        raise diverged_error(paths, summary["health"], phase.learning_rate, phase.auto_rate, phase.number)
    summary = finish(cfg, paths, index, summary, state.best, chief=device.is_chief)
    return TrainResult(TRAINED, paths.root, summary)


def _phase_summary(cfg: Config, state: TrainState, inputs: dict) -> list[dict]:
    out = []
    for phase in plan_phases(cfg):
        ran = [r["epoch"] for r in state.rows if r.get("phase", 1) == phase.number]
        out.append({"phase": phase.number, "frozen_blocks": list(phase.frozen_blocks),
                    "learning_rate": phase.learning_rate, "learning_rate_auto": phase.auto_rate,
                    "epochs_planned": phase.epochs,
                    "epochs": [ran[0], ran[-1]] if ran else None, "input": inputs.get(phase.number)})
    return out


def _plot_curves(paths: RunPaths, state: TrainState, monitor: str) -> None:
    """<run>/curves.png: loss and accuracy per epoch. A picture that cannot be drawn is not worth failing a run."""
    if not state.rows:
        return
    try:
        from vgg_cli.plots import training_curves

        training_curves(state.rows, paths.curves, best_epoch=state.best_epoch, monitor=monitor)
    except ImportError as e:
        log.warning("no training curves picture: %s", e)


def _interrupted(paths: RunPaths, state: TrainState, why: str) -> InterruptedRun:
    if state.epoch == 0:
        text = f"training stopped by {why} before the first epoch finished; resume with: vgg train --resume {paths.root}"
    else:
        text = (f"training stopped by {why} after epoch {state.epoch}; {paths.last} holds epoch {state.epoch} and "
                f"{paths.best} epoch {state.best_epoch}; {LATEST} was not moved; resume with: "
                f"vgg train --resume {paths.root}")
    log.warning(text, extra={"console": False})  # for train.log: the console gets it once, as the error line
    return InterruptedRun(text)


@dataclass
class InputPlan:
    """What feeds training: a source of per-image arrays and the model that trains on them (a view of the saved
    model, sharing its layers and optimizer, that outputs logits: the loss is computed from them)."""
    source: object
    fit_model: keras.Model
    info: dict  # summary.json "input": which path ran and why, cache use
    train_ids: list[int]
    val_ids: list[int]
    labels: np.ndarray
    cache_root: Path | None = None  # the feature cache folder, and the entries this run uses (never pruned)
    cache_entries: frozenset = frozenset()


def input_plan(cfg: Config, index: DatasetIndex, model: keras.Model, stop_check,
                frozen_blocks: tuple[int, ...]) -> InputPlan:
    """Cached frozen-prefix features when the leading blocks (of ``frozen_blocks``, this phase's) are frozen and
    augmentation is off; else images (with the RAM image cache when enabled)."""
    from vgg_cli.data.pipeline import ImageSource
    from vgg_cli.model import frozen_prefix_blocks

    entries = [e for e in index.files if e.split == TRAIN] + [e for e in index.files if e.split == VAL]
    n_train = sum(1 for e in entries if e.split == TRAIN)
    files = [str(index.root_of(e) / e.path) for e in entries]
    labels = np.asarray([e.label for e in entries], np.int32)
    ids = list(range(len(entries)))
    ram = cfg.cache.ram_mb * 2**20
    blocks = frozen_prefix_blocks(frozen_blocks)
    why_not = None
    if cfg.cache.features == "off":
        why_not = "cache.features=off"
    elif cfg.augment.active:
        why_not = "augmentation is on"
    elif blocks == 0:
        why_not = "block 1 is not frozen"
    if why_not is None:
        from vgg_cli.data.features import FeatureSource, FeatureStore, prefix_key
        from vgg_cli.model import compile_model, split_frozen_prefix

        prefix, rest = split_frozen_prefix(model, blocks)
        key = prefix_key(prefix, cfg.model.arch, blocks, cfg.data.image_size)
        root = Path(cfg.cache.dir) if cfg.cache.dir else Path(cfg.output.dir) / ".cache" / "features"
        shape = tuple(int(d) for d in prefix.output.shape[1:])
        store = FeatureStore(root, key, shape, prefix.output.dtype)
        source = FeatureSource(store, [e.sha1 for e in entries], ram)
        t0 = time.perf_counter()
        # every process of a distributed job needs every feature, and may find a different part of it cached
        source.fill(local_predictor(prefix), files, cfg.data.image_size, cfg.train.batch_size, stop_check)
        compile_model(rest, cfg.train, len(index.classes), optimizer=model.optimizer, from_logits=True)
        cut = f"block{blocks}_pool" + (" (the whole backbone: head-only training)" if blocks == 5 else "")
        info = {"path": "features", "frozen_prefix_blocks": blocks, "cache_dir": str(store.dir),
                "computed": source.computed, "reused": source.reused, "in_ram": source.ram_items,
                "entries": len(source.unique), "mib": round(len(source.unique) * source.item_bytes / 2**20, 2),
                "seconds": round(time.perf_counter() - t0, 2),
                "description": f"cached features: frozen blocks 1-{blocks} ran once per image, training runs "
                               f"after {cut}; {source.describe()}"}
        return InputPlan(source, rest, info, ids[:n_train], ids[n_train:], labels, root,
                         frozenset(store.path(s) for s in source.unique))
    from vgg_cli.model import compile_model, logits_view

    source = ImageSource(files, cfg.data.image_size, ram if cfg.cache.images == "auto" else 0)
    info = {"path": "images", "why": why_not, "in_ram": source.ram_items,
            "description": f"whole network every epoch ({why_not}); {source.describe()}"}
    fit_model = logits_view(model)
    compile_model(fit_model, cfg.train, len(index.classes), optimizer=model.optimizer, from_logits=True)
    return InputPlan(source, fit_model, info, ids[:n_train], ids[n_train:], labels)


@dataclass
class FitOutcome:
    """How a session's training ended: a signal (``stopped_by``), divergence, or neither (all epochs ran)."""
    stopped_by: str | None = None
    seconds: float = 0.0
    inputs: dict = field(default_factory=dict)  # {phase number: what fed it}
    health: HealthRecord = field(default_factory=HealthRecord)
    diverged: Diverged | None = None


def _fit(cfg: Config, index: DatasetIndex, model: keras.Model, paths: RunPaths, state: TrainState) -> FitOutcome:
    """Train epochs state.epoch .. epochs-1, phase by phase, watching the run's health (vgg_cli.health)."""
    phases = plan_phases(cfg)
    stopper = StopOnSignal()
    t0 = time.perf_counter()
    out = FitOutcome()
    # the phase the model is set up for: a new run's or a checkpoint's (its trainable flags and optimizer)
    configured = state.rows[-1].get("phase", 1) if state.rows else 1
    weights = class_weights(cfg, index)
    if weights is not None:
        log.info("class weights: %s", ", ".join(f"{index.classes[i]} {w:.3g}" for i, w in weights.items()))
    with stopper:
        try:
            while state.epoch < state.epochs and not state.stopped_early:
                i = state.phase_index
                phase = phases[i]
                if phase.number != configured:
                    set_up_phase(model, cfg, phase, _n_train(index), len(index.classes))
                    configured = phase.number
                if len(phases) > 1:
                    log.info("%s (epochs %d-%d)", phase.describe(), state.phase_start(i) + 1, state.phase_ends[i])
                out.inputs[phase.number] = _fit_phase(cfg, index, model, paths, state, phase, stopper, weights,
                                                      out.health)
        except _Stop as e:
            out.stopped_by = str(e)
        except KeyboardInterrupt:
            out.stopped_by = stopper.signal_name or "SIGINT"
        except Diverged as e:
            out.diverged = e
            out.health.status = "diverged"
            out.health.diverged = {"epoch": e.epoch, "what": e.what, "kept_epoch": state.epoch}
    out.seconds = time.perf_counter() - t0
    return out


def _fit_phase(cfg: Config, index: DatasetIndex, model: keras.Model, paths: RunPaths, state: TrainState,
               phase: Phase, stopper: StopOnSignal, weights: dict[int, float] | None, health: HealthRecord) -> dict:
    """Fit the rest of one phase (to state.phase_ends[phase]); returns the input description."""
    from vgg_cli.data.pipeline import close_batches, eval_batches, train_batches

    bs, seed = cfg.train.batch_size, cfg.train.seed
    end = state.phase_ends[phase.number - 1]
    plan = train_ds = val_ds = None
    try:
        plan = input_plan(cfg, index, model, stopper._check, phase.frozen_blocks)
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
        if sys.stderr.isatty():
            callbacks.insert(2, ProgressBar(state.epochs, steps, bs))
        if cfg.output.tensorboard and EpochScalars.available():
            callbacks.append(EpochScalars(paths.tensorboard))
        elif cfg.output.tensorboard and phase.number == 1:
            log.warning("output.tensorboard: TensorFlow is not installed, so no TensorBoard logs are written "
                        "(metrics.csv and curves.png have the same numbers); set output.tensorboard=false to "
                        "silence this")
        fixes = _keras_multi_worker_fixes(plan, weights is not None) if in_multi_worker_scope() else nullcontext()
        with fixes:
            plan.fit_model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=state.epoch,
                               steps_per_epoch=steps, callbacks=callbacks, shuffle=False, verbose=0,
                               validation_steps=steps_per_epoch(len(plan.val_ids), bs) if val_ds is not None else None)
        log.debug("fit returned (peak RSS %s MiB)", peak_rss_mib())
    finally:
        for batches in (train_ds, val_ds):
            close_batches(batches)
        if plan is not None:
            plan.source.close()
            if plan.cache_root is not None:
                from vgg_cli.data.features import prune_cache

                removed = prune_cache(plan.cache_root, cfg.cache.disk_mb * 2**20, plan.cache_entries)
                if removed:
                    log.info("feature cache %s: removed %d least recently used entries (cache.disk_mb=%d)",
                             plan.cache_root, removed, cfg.cache.disk_mb)
    return plan.info


@contextmanager
def _keras_multi_worker_fixes(plan: InputPlan, weighted: bool):
    """Two Keras 3 bugs stop ``fit`` under MultiWorkerMirroredStrategy (keras-team/keras#20585, open):

    1. to build the loss, metric and optimizer state, fit reduces the first distributed batch with
       ``strategy.reduce("MEAN", (x, y))``, a nested structure the collective all-reduce rejects. We build that
       state here from the batch's shapes (what Keras' own symbolic build does) and drop the model's captured
       strategy, so fit skips that step; every step still runs under the enclosing scope's strategy
       (``distribute_strategy`` falls back to ``tf.distribute.get_strategy()``).
    2. each step's scalar logs (loss, metrics) are reduced across workers with ``axis=0``, which fails on a
       scalar. For the duration of fit they are averaged across replicas (``axis=None``), so every worker logs,
       checkpoints and early-stops on the same numbers.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    source, model = plan.source, plan.fit_model
    batch = [np.zeros((2, *source.shape), source.dtype), np.zeros(2, np.int32)]
    if weighted:
        batch.append(np.ones(2, np.float32))
    model._symbolic_build(data_batch=tuple(batch))
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    captured, model._distribute_strategy = model._distribute_strategy, None

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        model._distribute_strategy = captured


def _summary(cfg: Config, index: DatasetIndex, model: keras.Model, device, state: TrainState, run_info: dict,
             outcome: FitOutcome, t_start: float) -> dict:
    n_train = sum(1 for e in index.files if e.split == TRAIN)
    n_val = len(index.files) - n_train
    has_val = n_val > 0
    stopped_by, train_s = outcome.stopped_by, outcome.seconds
    if outcome.diverged is not None:
        status = DIVERGED
    elif stopped_by:
        status = INTERRUPTED
    else:
        status = "early_stopped" if state.stopped_early else "finished"
    seconds = sum(r["seconds"] for r in state.rows)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return {
        "status": status,
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
        "finished": _now(),
        "resumed": run_info["resumed"],
        "timings": {**run_info["timings"], "epochs_s": round(seconds, 2), "this_session_train_s": round(train_s, 2),
                    "this_session_total_s": round(time.perf_counter() - t_start, 2),
                    "images_per_sec": round(n_train * len(state.rows) / seconds, 2) if seconds > 0 else None},
        "device": device.to_dict(),
        "versions": _versions(),
    }
