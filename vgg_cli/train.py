"""One training run: scan -> model -> fit -> run directory.

The config is read, never changed. Nothing is written until the dataset scan and the model build have
succeeded, so a bad dataset or weights path leaves no half-made run behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras

from vgg_cli import __version__
from vgg_cli.config import Config
from vgg_cli.data.scan import TRAIN, VAL, DatasetIndex, previous_splits_from, require_dir, scan
from vgg_cli.device import setup_devices
from vgg_cli.model import build_model, check_weights_available, compile_model
from vgg_cli.errors import InterruptedRun
from vgg_cli.runs import (LATEST, RunPaths, check_run_name_free, new_run_dir, point, write_json, write_text,
                          write_with)

log = logging.getLogger("vgg")


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _fmt(logs: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in logs.items())


class Monitor:
    """Which epoch is best: ``val_accuracy`` (ties broken by lower ``val_loss``) or ``val_loss``."""

    def __init__(self, name: str, has_val: bool):
        self.name = name if has_val else name.removeprefix("val_")
        self.loss_key = "val_loss" if has_val else "loss"
        self.mode = "min" if self.name.endswith("loss") else "max"

    def key(self, logs: dict) -> tuple[float, float]:
        if self.mode == "min":
            return (-logs[self.name], 0.0)
        return (logs[self.name], -logs[self.loss_key])


class RunRecorder(keras.callbacks.Callback):
    """Per epoch: metrics.csv, model/last.keras and (on improvement) model/best.keras, all written atomically."""

    def __init__(self, paths: RunPaths, monitor: Monitor, epochs: int, n_train: int):
        super().__init__()
        self.paths, self.monitor, self.epochs, self.n_train = paths, monitor, epochs, n_train
        self.rows: list[dict] = []
        self.best: dict | None = None
        self._t0 = self._t_val = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._t_val = 0.0

    def on_test_begin(self, logs=None):
        if not self._t_val:
            self._t_val = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        train_s = (self._t_val or end) - self._t0
        metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        row = {"epoch": epoch + 1, **metrics, "seconds": round(end - self._t0, 3),
               "images_per_sec": round(self.n_train / train_s, 2) if train_s > 0 else None}
        self.rows.append(row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.paths.metrics, buf.getvalue())
        write_with(self.paths.last, self.model.save, suffix=".keras")
        improved = self.best is None or self.monitor.key(metrics) > self.monitor.key(self.best)
        if improved:
            self.best = row
            write_with(self.paths.best, lambda tmp: shutil.copyfile(self.paths.last, tmp), suffix=".keras")
        shown = {k: v for k, v in metrics.items()}
        log.info("epoch %d/%d  %s  %.1f img/s  %.1fs%s", epoch + 1, self.epochs, _fmt(shown),
                 row["images_per_sec"] or 0.0, row["seconds"], "  *best" if improved else "")


class ProgressBar(keras.callbacks.Callback):
    """A tqdm bar per epoch on a terminal (images/s, loss, accuracy); nothing otherwise."""

    def __init__(self, epochs: int, steps: int, batch_size: int):
        super().__init__()
        self.epochs, self.steps, self.batch_size = epochs, steps, batch_size
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm import tqdm

        self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                        leave=False, file=sys.stderr, dynamic_ncols=True)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None:
            return
        self.bar.update(1)
        elapsed = time.perf_counter() - self._t0
        logs = logs or {}
        post = {"img/s": f"{(batch + 1) * self.batch_size / elapsed:.1f}" if elapsed > 0 else "-"}
        for k in ("loss", "accuracy"):
            if k in logs:
                post[k] = f"{float(logs[k]):.4f}"
        self.bar.set_postfix(post, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _EarlyLog(logging.Handler):
    """Keeps the records logged before the run directory exists, so train.log tells the whole story."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _attach_log_file(path: Path, early: _EarlyLog) -> logging.Handler:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
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
    if out["backend"] == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
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


def run_training(cfg: Config) -> TrainResult:
    t_start = time.perf_counter()
    started = _now()
    early = _EarlyLog()
    log.addHandler(early)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        return _train(cfg, early, started, t_start)
    finally:
        log.removeHandler(early)
        keras.mixed_precision.set_global_policy(previous_policy)  # a run's precision does not leak into the caller


def _train(cfg: Config, early: _EarlyLog, started: str, t_start: float) -> TrainResult:
    # Cheap checks first (paths, run name, GPUs), then weights (maybe a download), then the long scan.
    require_dir(cfg.data.train_dir, "data.train_dir")
    if cfg.data.val_dir is not None:
        require_dir(cfg.data.val_dir, "data.val_dir")
    check_run_name_free(Path(cfg.output.dir), cfg.output.name)
    device = setup_devices(cfg.train)
    check_weights_available(cfg.model)
    index = scan(cfg.data, previous_splits=_previous_splits(cfg))
    _log_scan(index)
    t_scanned = time.perf_counter()

    keras.utils.set_random_seed(cfg.train.seed)
    log.info("backend %s, precision %s (%s)", device.backend, device.precision, device.note)
    model, weights_source = build_model(cfg.model, cfg.data.image_size, index.classes)
    compile_model(model, cfg.train, len(index.classes))
    log.info("backbone %s, weights: %s, frozen blocks: %s", cfg.model.arch, weights_source,
             cfg.model.freeze_blocks or "none")
    t_built = time.perf_counter()

    paths = new_run_dir(Path(cfg.output.dir), cfg.output.name, Path(index.train_dir).name)
    handler = _attach_log_file(paths.log, early)
    try:
        log.info("run directory %s", paths.root)
        write_text(paths.config, cfg.to_yaml())
        write_json(paths.classes, index.classes)
        write_json(paths.data, index.manifest())
        summary = _fit(cfg, index, model, paths, device, weights_source)
        summary.update(run=paths.root.name, started=started, finished=_now())
        summary["timings"].update(scan_s=round(t_scanned - t_start, 2), build_s=round(t_built - t_scanned, 2),
                                  total_s=round(time.perf_counter() - t_start, 2))
        write_json(paths.summary, summary)
        if summary["status"] == "interrupted":
            raise _interrupted(paths, summary)
        point(paths.root.parent / LATEST, paths.root.name)
        b = summary["best"]
        log.info("done: best %s %.4f at epoch %d of %d; model in %s", summary["monitor"], b[summary["monitor"]],
                 b["epoch"], summary["epochs_run"], paths.best)
    finally:
        log.removeHandler(handler)
        handler.close()
    return TrainResult(paths.root, summary)


def _interrupted(paths: RunPaths, summary: dict) -> InterruptedRun:
    done = summary["epochs_run"]
    if done == 0:
        text = f"training interrupted before the first epoch finished; {paths.root} has no model"
    else:
        text = (f"training interrupted after epoch {done}; {paths.last} holds epoch {done} and {paths.best} "
                f"epoch {summary['best']['epoch']}; {LATEST} was not moved to this run")
    log.warning(text)
    return InterruptedRun(text)


def _fit(cfg: Config, index: DatasetIndex, model: keras.Model, paths: RunPaths, device, weights_source: str) -> dict:
    from vgg_cli.data.pipeline import make_dataset

    train_paths, train_labels = index.split(TRAIN)
    val_paths, val_labels = index.split(VAL)
    size, bs, seed = cfg.data.image_size, cfg.train.batch_size, cfg.train.seed
    train_ds = make_dataset(train_paths, train_labels, size, bs, shuffle=True, seed=seed)
    val_ds = make_dataset(val_paths, val_labels, size, bs, shuffle=False, seed=seed) if val_paths else None
    if val_ds is None:
        log.warning("no validation images (data.val_split=0 and no data.val_dir): best model chosen on training metrics")
    monitor = Monitor(cfg.train.monitor, has_val=val_ds is not None)
    steps = -(-len(train_paths) // bs)
    recorder = RunRecorder(paths, monitor, cfg.train.epochs, len(train_paths))
    callbacks: list = [recorder]
    if sys.stderr.isatty():
        callbacks.insert(0, ProgressBar(cfg.train.epochs, steps, bs))
    if cfg.train.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor.name, mode=monitor.mode,
                                                       patience=cfg.train.early_stopping_patience))
    if cfg.output.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(paths.tensorboard), write_graph=False,
                                                     profile_batch=0))
    t0 = time.perf_counter()
    interrupted = False
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs, callbacks=callbacks,
                  shuffle=False, verbose=0)  # the tf.data pipeline shuffles
    except KeyboardInterrupt:
        interrupted = True  # finished epochs are on disk (atomic writes); record how far the run got
    train_s = time.perf_counter() - t0
    rows = recorder.rows
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    if interrupted:
        status = "interrupted"
    else:
        status = "early_stopped" if len(rows) < cfg.train.epochs else "finished"
    return {
        "status": status,
        "epochs_run": len(rows),
        "monitor": monitor.name,
        "best": recorder.best,
        "final": rows[-1] if rows else None,
        "classes": index.classes,
        "counts": index.counts(),
        "images": {"train": len(train_paths), "val": len(val_paths), "skipped": len(index.skipped)},
        "fingerprint": index.fingerprint,
        "weights": weights_source,
        "params": {"total": int(model.count_params()), "trainable": trainable},
        "timings": {"train_s": round(train_s, 2),
                    "images_per_sec": round(len(train_paths) * len(rows) / train_s, 2) if train_s > 0 and rows
                    else None},
        "device": device.to_dict(),
        "versions": _versions(),
    }
