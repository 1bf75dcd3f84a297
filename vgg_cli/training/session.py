"""One training session, opened once: everything a command about one run works with.

``open_session`` makes it for a new run, a multi-worker job's other worker and ``vgg lr-find`` (config -> warm
start and layout resolved, dataset scan) and for a run read back from its directory to resume (its config, its
data.json's files); both then set up the devices and make the plan the same way. Later stages take the
``Session``, never ``(cfg, paths, index, ...)`` again, and ask it for what they would otherwise re-derive: the runs
folder (built once per command, by the caller), the model to train (``start``: a new one, or the committed
checkpoint), the model built, frozen and compiled for a phase (``build``), and the feature cache (``cut`` and
``store``: the same decision every reader of the run takes from ``vgg_cli.data.features``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Sequence

import keras

from vgg_cli.config.schema import Config, head_norm_of
from vgg_cli.data.features import FeatureCut, FeatureStore, feature_cut, feature_store
from vgg_cli.data.index import DatasetIndex
from vgg_cli.data.scan import check_layout
from vgg_cli.errors import ConfigError
from vgg_cli.model.build import apply_freeze, backbone_of, build_model
from vgg_cli.model.optim import compile_model
from vgg_cli.model.weights import check_weights_available
from vgg_cli.platform.device import DeviceInfo, setup_devices
from vgg_cli.runs.root import RunsRoot
from vgg_cli.runs.rundir import RunDir
from vgg_cli.training.checkpoints import TrainState, load_checkpoint, sync
from vgg_cli.training.plan import Phase, TrainingPlan, make_plan, set_up_phase
from vgg_cli.training.prepare import log_scan, previous_splits, resolve_sources, scan_dataset
from vgg_cli.training.reread import load_index

log = logging.getLogger("vgg")


@dataclass(frozen=True)
class Session:
    """The config (warm start and layout resolved), the runs folder, the dataset, the plan made of them, the devices
    and, once it exists, the run directory."""
    cfg: Config
    runs: RunsRoot
    index: DatasetIndex
    plan: TrainingPlan
    device: DeviceInfo
    paths: RunDir | None = None  # None until the run directory is made (and for lr-find, which makes none)
    chief: bool = True  # False: a multi-worker job's other worker (it writes to a scratch folder)

    def with_run(self, paths: RunDir) -> Session:
        return replace(self, paths=paths)

    def build(self, phase: Phase | None = None, learning_rate: float | None = None) -> tuple[keras.Model, str]:
        """(a new model, where its weights came from): built, frozen and compiled for ``phase`` (default the first)
        in the devices' scope, seeded with train.seed. ``learning_rate``: a constant rate instead of the phase's
        (lr-find sets its own at every step)."""
        cfg, phase = self.cfg, phase or self.plan.phases[0]
        keras.utils.set_random_seed(cfg.train.seed)
        with self.device.scope():  # a distribution strategy's variables are made in its scope
            model, source = build_model(cfg.model, cfg.data.image_size, self.index.classes, augment=cfg.augment,
                                        resize=cfg.data.resize, task=self.plan.task, norm=head_norm_of(cfg))
            if learning_rate is None:
                set_up_phase(model, cfg, self.plan, phase)
            else:
                apply_freeze(backbone_of(model), phase.frozen_blocks)
                compile_model(model, cfg.train, self.plan.n_classes, learning_rate=learning_rate, task=self.plan.task)
        return model, source

    def start(self, state: TrainState | None) -> tuple[keras.Model, TrainState, str | None]:
        """(model, state, where a new model's weights came from) to train: a new model from the first epoch when
        ``state`` is None (nothing committed), else the committed checkpoint of ``state`` (None for the source)."""
        paths = self.paths
        if state is None:
            if paths is not None:
                log.info("resuming %s from the start: no epoch was completed", paths.root.name)
            model, source = self.build()
            return model, self.plan.new_state(), source
        sync(paths, state)  # repair anything a crash between commit and sync left behind
        log.info("resuming %s after epoch %d of %d (best: epoch %s)", paths.root.name, state.epoch, state.epochs,
                 state.best_epoch)
        keras.utils.set_random_seed(self.cfg.train.seed + state.epoch)
        with self.device.scope():
            model, state.base = load_checkpoint(state.checkpoint_path(paths))
        return model, state, None

    def cut(self, frozen_blocks: Sequence[int]) -> FeatureCut:
        """Whether a phase with ``frozen_blocks`` frozen feeds on cached features, and where the model is cut."""
        return feature_cut(self.cfg, frozen_blocks)

    def store(self, prefix_model, blocks: int) -> FeatureStore:
        """The feature store of the frozen prefix ``prefix_model`` (cut after ``blocks``)."""
        return feature_store(self.runs, self.cfg, prefix_model, blocks)


def open_session(cfg: Config, runs: RunsRoot, chief: bool = True, fail_fast: tuple[str, ...] = ("name", "weights"),
                 reads: RunsRoot | None = None, run: RunDir | None = None, index: DatasetIndex | None = None) -> Session:
    """A session. For a new run (or lr-find, or a worker): the warm start and the dataset layout resolved, the
    dataset scanned (keeping the sticky split of runs/latest); for ``run``, a run read back from its directory to
    resume: its config ``cfg`` and its data.json's files. Then, alike: the devices set up and said, and the plan
    made. ``fail_fast``: what a new run checks before the scan, which can be long (``check_can_train``).
    ``reads``: where the warm start and the sticky split are read from, when not ``runs`` (a multi-worker job's
    other workers write to a scratch folder, but must split and start as the chief does). ``index``: the dataset
    of a new run, when the caller scanned it already."""
    if run is None:
        reads = reads or runs
        cfg = resolve_sources(cfg, reads)
        check_layout(cfg.data)  # a wrong layout is reported before anything slow or networked
    device = setup_devices(cfg.train, runs.compile_cache, cfg.cache.compile_mb)
    if run is None:
        check_can_train(cfg, runs, fail_fast)
        if index is None:
            index = scan_dataset(cfg, runs, None if reads is runs else previous_splits(cfg, reads))
        else:
            log_scan(index)
    else:
        index = load_index(run)
    _say_device(device, cfg)
    return Session(cfg, runs, index, make_plan(cfg, index), device, run, chief)


def check_can_train(cfg: Config, runs: RunsRoot, checks: tuple[str, ...] = ("name", "weights")) -> None:
    """What a new run needs before anything slow: "name" (output.name is free in ``runs``), "weights" (the weights
    file or Keras' cached download is there)."""
    if "name" in checks:
        runs.check_name_free(cfg.output.name)
    if "weights" in checks:
        check_weights_available(cfg.model)


def _say_device(device: DeviceInfo, cfg: Config) -> None:
    """Log the backend, precision, compile cache and distribution; a global batch smaller than the replicas is a
    config error."""
    log.info("backend %s, precision %s (%s)", device.backend, device.precision, device.note)
    if device.compile_cache is not None:
        c = device.compile_cache
        log.info("compile cache %s (%s)", c.dir, f"at most {c.max_mb} MiB" if c.max_mb else "not bounded by vgg")
    if device.distribute == "none":
        return
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
