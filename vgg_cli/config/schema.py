"""Configuration: defaults + user YAML + ``key=value`` overrides, validated once, then frozen.

The defaults and the documentation of every key live in one place, ``vgg_cli/config/default.yaml`` (also at
``configs/default.yaml``). This module knows types and ranges (the pydantic schema below), the rules that tie
sections together and how to report a bad value; reading and merging the sources is ``vgg_cli.config.sources``.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from vgg_cli.config.fields import AUTO, NOT_IN_DIGEST, Since, a_path, path_text, positive_rate, whole_number
from vgg_cli.config.rules import check_outputs_outside_data
from vgg_cli.config.sources import _merge, _read_yaml, default_dict, key_and_value, resolve_dict, upgrade_keys
from vgg_cli.config.yamltext import shown, yaml_load
from vgg_cli.errors import ConfigError, DataError

__all__ = ["AUTO", "BLOCKS", "Config", "auto_learning_rate", "default_dict", "head_norm", "head_norm_of", "load_config",
           "load_run_config", "resolve_dict", "validate", "yaml_load"]

BLOCKS = (1, 2, 3, 4, 5)


def _conv_blocks(v: list[int]) -> list[int]:
    bad = [b for b in v if b not in BLOCKS]
    if bad:
        raise ValueError(f"blocks must be between 1 and 5, got {shown(bad)}")
    return sorted(set(v))


BlockList = Annotated[list[int], AfterValidator(_conv_blocks)]  # conv block numbers, sorted, each once
# train.optimizer.learning_rate: auto (see auto_learning_rate; measured on the digit scans, README)
AUTO_RATE_HEAD_ONLY = 1e-3  # every conv block frozen: only the new head trains (keras.io guide, fastai's frozen epochs)
AUTO_RATE_BACKBONE = 1e-4  # any conv block trains too: 1e-3 collapses a from-scratch VGG16 and wrecks ImageNet features


_NUMBER_TYPES = (int, float, int | None, float | None)
MAX_EPOCHS = 10_000  # train.epochs, finetune.epochs, schedule step and warm-up, early-stopping patience
MAX_UNITS, MAX_DENSE = 16_384, 10  # model.head.dense: units of one layer (VGG16's own head has 4096), layers
MAX_NAME = 200  # output.name: bytes (UTF-8) of the run folder's name; file systems allow 255


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v: Any, info) -> Any:
        # pydantic reads true as 1 for an int field: train.epochs=true would silently be 1 epoch.
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in _NUMBER_TYPES:
            raise ValueError("must be a number, not true/false")
        return v


class DataConfig(_Section):
    train_dir: Annotated[str, a_path("must name the dataset folder (one subfolder per class), e.g. ~/photos")]
    val_dir: Annotated[str | None, a_path()]
    test_dir: Annotated[str | None, a_path(), Since(None)]
    val_split: float = Field(ge=0.0, le=0.9)
    image_size: Annotated[int, whole_number(32, 1024)]
    resize: Annotated[Literal["squash", "crop", "pad"], Since("squash")]
    classes: list[str] | None
    duplicates: Literal["keep", "drop"]

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("must name at least 2 classes, or be null to use every class folder")
        dup = sorted(c for c, n in Counter(v).items() if n > 1)
        if dup:
            raise ValueError(f"names {shown(dup)} more than once")
        return v


class HeadConfig(_Section):
    pooling: Literal["flatten", "avg", "max"]
    norm: Annotated[Literal["auto", "standard", "batch", "none"], Since("none")]
    dense: list[int]
    dropout: float = Field(ge=0.0, le=0.95)

    @field_validator("dense")
    @classmethod
    def _dense(cls, v: list[int]) -> list[int]:
        bad = [u for u in v if not 1 <= u <= MAX_UNITS]
        if bad or len(v) > MAX_DENSE:
            raise ValueError(f"at most {MAX_DENSE} dense layers, every dense layer needs units >= 1 and at most "
                             f"{MAX_UNITS}" + (f" (got {shown(bad)})" if bad else f" (got {len(v)} layers)"))
        return v


class ModelConfig(_Section):
    arch: Literal["vgg16", "vgg19"]
    weights: str
    freeze_blocks: BlockList
    head: HeadConfig

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> str:
        if v is None or v is False:
            return "none"
        if not isinstance(v, str) or not v.strip():
            empty = " (empty, as from an unset shell variable, is not none: write none for random weights)"
            raise ValueError(f"must be imagenet, none, production, latest, or a path to a weights file, .keras "
                             f"model or run directory{empty if v == '' else ''}")
        return v if v in ("imagenet", "none", "production", "latest") else path_text(v)


class OptimizerConfig(_Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"]
    learning_rate: float | Literal["auto"]
    momentum: float = Field(ge=0.0, lt=1.0)
    weight_decay: float = Field(ge=0.0, allow_inf_nan=False)

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        return positive_rate(v)


class ScheduleConfig(_Section):
    name: Literal["constant", "cosine", "step"]
    warmup_epochs: float = Field(ge=0.0, le=MAX_EPOCHS)
    step_epochs: Annotated[int, whole_number(1, MAX_EPOCHS)]
    step_factor: float = Field(gt=0.0, le=1.0)


class TrainConfig(_Section):
    epochs: Annotated[int, whole_number(1, MAX_EPOCHS)]
    batch_size: Annotated[int, whole_number(1, 65_536)]
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    class_weight: Literal["balanced"] | dict[str, float] | None
    monitor: Literal["val_accuracy", "val_loss"]
    early_stopping_patience: Annotated[int, whole_number(0, MAX_EPOCHS)]
    seed: Annotated[int, whole_number(0, 2**32 - 1)]  # NumPy's seed range
    mixed_precision: Literal["auto", "on", "off"]
    gpus: list[int] | None
    distribute: Literal["auto", "none", "mirrored", "multi_worker"]
    backend: Annotated[Literal["auto", "tensorflow", "jax", "torch"], Since("auto")]

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        # Our loader keeps on/off as strings; a config built in Python may still pass a bool.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("class_weight", mode="before")
    @classmethod
    def _class_weight(cls, v: Any) -> Any:
        if v is None or v == "balanced":
            return v
        if not isinstance(v, dict) or not v:
            raise ValueError("must be balanced, null, or a mapping {class: weight}")
        bad = {k: w for k, w in v.items()
               if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1e300}
        if bad:
            raise ValueError(f"weights must be finite numbers > 0, got {shown(bad)}")
        return {str(k): float(w) for k, w in v.items()}

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 0 <= g < 1024 for g in v):
            raise ValueError("GPU indices must be >= 0 and below 1024")
        return v


class FinetuneConfig(_Section):
    epochs: Annotated[int, whole_number(0, MAX_EPOCHS)]
    unfreeze_blocks: BlockList
    learning_rate: float

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        if v == AUTO:
            raise ValueError("must be a finite number > 0 (auto applies to train.optimizer.learning_rate only)")
        return positive_rate(v)


class AugmentConfig(_Section):
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"]
    rotation: float = Field(ge=0.0, le=0.5)
    zoom: float = Field(ge=0.0, le=0.9)
    translation: float = Field(ge=0.0, le=0.5)
    contrast: float = Field(ge=0.0, le=1.0)
    brightness: float = Field(ge=0.0, le=1.0)

    @field_validator("flip", mode="before")
    @classmethod
    def _flip(cls, v: Any) -> Any:
        return "none" if v is None or v is False else v

    @property
    def active(self) -> bool:
        return self.flip != "none" or any((self.rotation, self.zoom, self.translation, self.contrast,
                                           self.brightness))


class CacheConfig(_Section):
    features: Literal["auto", "off"]
    images: Literal["auto", "off"]
    ram_mb: Annotated[int, whole_number(0, 2**24)]  # 16 TiB
    dir: Annotated[str | None, a_path()]
    disk_mb: Annotated[int, whole_number(1, 2**30)]  # 1 PiB
    compile_mb: Annotated[int, whole_number(1, 2**20)]  # 1 TiB

    @field_validator("features", "images", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v


class OutputConfig(_Section):
    dir: Annotated[str, a_path("must name a folder (e.g. runs); '' would write runs into the current folder")]
    name: str | None
    tensorboard: bool
    keep: Annotated[int | None, whole_number(1, 100_000)]
    report: bool

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        size = len(v.encode("utf-8", "surrogatepass")) if v is not None else 0
        if v is not None and (not v or size > MAX_NAME or any(c in v for c in "/\\") or v.startswith(".")
                              or any(ord(c) < 32 or ord(c) == 127 for c in v) or v in ("latest", "production")):
            raise ValueError(f"must be a plain folder name: one name of at most {MAX_NAME} bytes (UTF-8; this one "
                             f"has {size}), no '/' or '\\', no NUL or other control characters, not hidden "
                             f"(.name), not 'latest' or 'production'")
        return v


class PromoteConfig(_Section):
    min_accuracy: float | Literal["auto"]
    allow_class_change: bool
    on_drift: Literal["warn", "hold"]

    @field_validator("min_accuracy", mode="before")
    @classmethod
    def _min_accuracy(cls, v: Any) -> Any:
        if v == AUTO:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError("must be auto (better than always guessing the most common class) or a number 0..1")
        return float(v)


class CalibrationConfig(_Section):
    temperature: Annotated[bool, Since(True)]
    ood: Annotated[Literal["mahalanobis", "energy", "max_logit", "off"], Since("mahalanobis")]
    acceptance: Annotated[float, Field(ge=0.5, le=1.0), Since(0.95)]


class Config(_Section):
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    finetune: FinetuneConfig
    augment: AugmentConfig
    cache: Annotated[CacheConfig, NOT_IN_DIGEST]
    output: Annotated[OutputConfig, NOT_IN_DIGEST]
    promote: PromoteConfig
    calibration: CalibrationConfig

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------------------- loading


def _format_validation(err: ValidationError, tree: dict[str, Any], sources: dict[str, str]) -> str:
    errors = err.errors(include_url=False)
    key, value = key_and_value(tree, errors[0]["loc"])
    msg = errors[0]["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    example = "..."
    if errors[0]["type"] == "list_type" and isinstance(value, (str, int, float)):  # 1,2,3 or a lone 512
        example = f"[{value}]" if re.fullmatch(r"[\w.+-]+(\s*,\s*[\w.+-]+)*", str(value)) else "[...]"
        msg += " (a list is written in brackets, quoted for the shell)"
        example = f"'{key}={example}'"
        return (f"config key {key!r} = {shown(value)} from {sources.get(key, 'the defaults')} is invalid: {msg}; "
                f"write {example}{more}")
    value = "null (empty)" if value is None else "'' (empty)" if value == "" else shown(value)
    return (f"config key {key!r} = {value} from {sources.get(key, 'the defaults')} is invalid: {msg}; set a valid "
            f"value with {key}={example} or in your --config file{more}")


def load_config(config_path: str | os.PathLike | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Resolve and validate. Raises ConfigError (exit 78) with one line naming key, value and fix."""
    tree, sources = resolve_dict(config_path, overrides)
    return validate(tree, sources)


def validate(tree: dict[str, Any], sources: dict[str, str] | None = None) -> Config:
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, tree, sources or {})) from None
    _check_across_sections(cfg, sources or {})
    return cfg


def head_norm(norm: str, freeze_blocks, finetune_epochs: int = 0) -> str:
    """model.head.norm with ``auto`` resolved: ``standard`` when the features reaching the head never change in the
    run (every conv block frozen and no fine-tuning phase), fitted once and exact; else ``batch``, which follows
    features that move as conv blocks train (a fixed standardisation would magnify their drift: digits from
    scratch, 3 epochs, 0.563 test accuracy with it against 0.97 with batch; docs/measurements.md)."""
    if norm != AUTO:
        return norm
    return "standard" if set(BLOCKS) <= set(freeze_blocks) and finetune_epochs == 0 else "batch"


def head_norm_of(cfg: Config) -> str:
    return head_norm(cfg.model.head.norm, cfg.model.freeze_blocks, cfg.finetune.epochs)


def auto_learning_rate(frozen_blocks) -> float:
    """train.optimizer.learning_rate: auto for a phase with these conv blocks frozen: the head-only rate when all
    five are, else the lower rate at which trainable conv blocks (pretrained or from scratch) learn."""
    return AUTO_RATE_HEAD_ONLY if set(BLOCKS) <= set(frozen_blocks) else AUTO_RATE_BACKBONE


def _check_across_sections(cfg: Config, sources: dict[str, str]) -> None:
    """Rules that tie keys of different sections together (each key alone was valid)."""
    check_outputs_outside_data(cfg, sources)
    ft = cfg.finetune
    if ft.epochs > 0:
        src = sources.get("finetune.unfreeze_blocks", "the defaults")
        if not ft.unfreeze_blocks:
            raise ConfigError(f"config key 'finetune.unfreeze_blocks' = [] from {src} is invalid: phase 2 "
                              f"(finetune.epochs={ft.epochs}) needs blocks to unfreeze; set e.g. "
                              f"finetune.unfreeze_blocks=[4,5], or finetune.epochs=0")
        not_frozen = [b for b in ft.unfreeze_blocks if b not in cfg.model.freeze_blocks]
        if not_frozen:
            raise ConfigError(f"config key 'finetune.unfreeze_blocks' = {ft.unfreeze_blocks} from {src} is invalid: "
                              f"blocks {not_frozen} are not frozen in phase 1 (model.freeze_blocks="
                              f"{cfg.model.freeze_blocks}); unfreeze only blocks listed in model.freeze_blocks")


def load_run_config(path: Path) -> Config:
    """A run directory's config.yaml over today's defaults: a key added since it was written gets the value that
    means what runs did before it (its ``Since`` old value: ``model.head.norm: none``), any other its default."""
    tree, sources, name = copy.deepcopy(default_dict()), {}, f"run config {shown(str(path))}"
    run = upgrade_keys(_read_yaml(path), name)
    if not run.get("data") or not run.get("model"):
        raise DataError(f"{name} is empty or lacks its data/model sections (the run directory is "
                        f"damaged); it cannot be resumed or retrained: start a new run")
    for dotted, old in old_values().items():
        *sections, key = dotted.split(".")
        node = run
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key not in node:
            node[key] = old
    _merge(tree, run, name, sources)
    return validate(tree, sources)


def old_values(model: type[BaseModel] | None = None, prefix: str = "") -> dict[str, Any]:
    """{dotted key: the value that means what runs before it did} of every key marked ``Since``: what a run's
    config.yaml written before the key existed means by leaving it out."""
    model, out = model or Config, {}
    for key, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.update(old_values(kind, f"{prefix}{key}."))
        for marker in field.metadata:
            if isinstance(marker, Since):
                out[f"{prefix}{key}"] = marker.old
    return out

