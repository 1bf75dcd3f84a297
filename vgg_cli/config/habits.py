"""Keys users bring from other tools (Ultralytics' ``yolo classify train model=... data=... epochs=...``, fastai,
Keras scripts) and the vgg key that does the same. They are not accepted as aliases: a setting has one name in
configs, overrides, run directories and docs, so what a crontab says is what ``config.yaml`` says. Instead the
one-line error names the vgg key and the exact text to write."""

from __future__ import annotations

from typing import Any

# foreign key -> (vgg key, how the value carries over; None: as given)
HABITS: dict[str, tuple[str, str | None]] = {
    "model": ("model.arch", "vgg16 or vgg19"), "data": ("data.train_dir", None), "epochs": ("train.epochs", None),
    "imgsz": ("data.image_size", None), "batch": ("train.batch_size", None),
    "lr0": ("train.optimizer.learning_rate", None), "patience": ("train.early_stopping_patience", None),
    "device": ("train.gpus", "device=cpu is train.gpus=[], device=0,1 is train.gpus=[0,1]"),
    "optimizer": ("train.optimizer.name", "adam, adamw, sgd or rmsprop"), "seed": ("train.seed", None),
    "project": ("output.dir", None), "name": ("output.name", None),
    "pretrained": ("model.weights", "imagenet, none or a weights file"),
    "freeze": ("model.freeze_blocks", "a list of conv blocks 1-5, e.g. [1,2,3]"),
    "dropout": ("model.head.dropout", None), "label_smoothing": ("train.label_smoothing", None),
    "cos_lr": ("train.schedule.name", "cos_lr=True is train.schedule.name=cosine"),
    "lr": ("train.optimizer.learning_rate", None), "bs": ("train.batch_size", None),
    "batch_size": ("train.batch_size", None), "image_size": ("data.image_size", None),
    "img_size": ("data.image_size", None),
}


def habit_hint(dotted: str, value: Any) -> str:
    """ (did you mean ...? ...: write KEY=VALUE)" for a top-level key in HABITS, else ""."""
    if "." in dotted or dotted not in HABITS:
        return ""
    key, how = HABITS[dotted]
    shown = value if isinstance(value, (str, int, float)) and len(str(value)) <= 80 else "..."
    fits = how is None or (dotted == "model" and shown in ("vgg16", "vgg19"))
    write = f"{key}={shown}" if fits else f"{key}=... ({how})"
    return f" (did you mean {key!r}? {dotted!r} is another tool's name, Ultralytics' or a Keras script's: write {write})"
