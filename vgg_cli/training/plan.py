"""The training plan, built once per run from the config and the dataset (``make_plan``) and handed to every part
that needs it: the phases (what trains, at which resolved rate, for how many epochs: phase 1, and phase 2 with
finetune.*), the class weights, the epoch arithmetic; and setting a model up for a phase.

``learning_rate: auto`` is resolved here, and only here (``config.schema.auto_learning_rate`` says which rate fits
a phase's frozen blocks); everything downstream sees a number."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from vgg_cli.config.schema import AUTO, Config, auto_learning_rate
from vgg_cli.data.features import final_frozen_blocks
from vgg_cli.data.index import TRAIN, DatasetIndex
from vgg_cli.errors import ConfigError
from vgg_cli.model.build import apply_freeze, backbone_of
from vgg_cli.model.optim import compile_model, learning_rate_for
from vgg_cli.task import SINGLE_LABEL, Task
from vgg_cli.training.checkpoints import TrainState


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
        phases.append(Phase(2, cfg.finetune.epochs, final_frozen_blocks(cfg), cfg.finetune.learning_rate))
    return phases


@dataclass(frozen=True)
class TrainingPlan:
    """What training decided from the config and the dataset, once (``make_plan``)."""
    phases: tuple[Phase, ...]
    n_train: int  # training images
    n_classes: int
    class_weight: dict[int, float] | None  # {label: weight}, train.class_weight resolved
    task: Task = SINGLE_LABEL  # what an image's answer is (``vgg_cli.task``)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def phase_ends(self) -> list[int]:
        ends, total = [], 0
        for phase in self.phases:
            total += phase.epochs
            ends.append(total)
        return ends

    def new_state(self) -> TrainState:
        return TrainState(epochs=self.epochs, phase_ends=self.phase_ends)


def make_plan(cfg: Config, index: DatasetIndex) -> TrainingPlan:
    return TrainingPlan(tuple(plan_phases(cfg)), n_train(index), len(index.classes), class_weights(cfg, index))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return -(-n_train // batch_size)


def set_up_phase(model: keras.Model, cfg: Config, plan: TrainingPlan, phase: Phase) -> None:
    """Freeze the phase's blocks (everything else in the backbone trainable) and compile with a new optimizer at
    the phase's learning rate and schedule. Changing ``trainable`` needs this recompile (keras.io guide)."""
    apply_freeze(backbone_of(model), phase.frozen_blocks)
    rate = learning_rate_for(cfg.train.schedule, phase.learning_rate, phase.epochs,
                             steps_per_epoch(plan.n_train, cfg.train.batch_size))
    compile_model(model, cfg.train, plan.n_classes, learning_rate=rate, task=plan.task)


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


def n_train(index: DatasetIndex) -> int:
    return sum(1 for e in index.files if e.split == TRAIN)
