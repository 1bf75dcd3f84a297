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


def habit_fix(dotted: str, value: Any) -> str | None:
    """The vgg override that does what another tool's ``dotted=value`` does, when it carries over as given."""
    if "." in dotted or dotted not in HABITS:
        return None
    key, how = HABITS[dotted]
    fits = isinstance(value, (str, int, float)) and len(str(value)) <= 80 and (
        how is None or (dotted == "model" and value in ("vgg16", "vgg19")))
    return f"{key}={value}" if fits else None


def habit_hint(dotted: str, value: Any) -> str:
    """ (did you mean ...? ...: write KEY=VALUE)" for a top-level key in HABITS, else ""."""
    if "." in dotted or dotted not in HABITS:
        return ""
    key, how = HABITS[dotted]
    write = habit_fix(dotted, value) or f"{key}=... ({how or 'its value'})"
    return f" (did you mean {key!r}? {dotted!r} is another tool's name, Ultralytics' or a Keras script's: write {write})"


def together(given: list[tuple[str, str | None, Any]]) -> str:
    """"; all together: ..." when every override of another tool's names carries over as given (the whole
    corrected list, to copy), else "". ``given``: (the override's text, its key or None when it did not parse,
    its value) for each override, in order."""
    fixed = []
    for text, key, value in given:
        if key is None:
            return ""
        fix = habit_fix(key, value) if key in HABITS else text
        if fix is None:
            return ""
        fixed.append(fix)
    return "; all together: " + " ".join(fixed) if fixed != [text for text, _, _ in given] else ""
