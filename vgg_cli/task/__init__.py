"""The task as a seam: what "an image's answer" means, behind one small interface (``base.Task``), so that the rest
of the package never asks which task it serves. ``single_label.SINGLE_LABEL`` (one class of N) is today's task;
a multi-label task is a second implementation, registered in ``TASKS``. NumPy only (no framework import): the
light readers (the NumPy prediction engine, calibration, the label-issue search) share it with training. ``head``:
the logits layer's name, its weights digest and the softmax."""

from __future__ import annotations

from vgg_cli.errors import DataError
from vgg_cli.task.base import Task
from vgg_cli.task.single_label import SINGLE_LABEL

TASKS: dict[str, Task] = {SINGLE_LABEL.name: SINGLE_LABEL}


def task_named(name: str | None) -> Task:
    """The task a run recorded (summary.json "task"); runs from before the field are single-label."""
    if name is None:
        return SINGLE_LABEL
    if name not in TASKS:
        raise DataError(f"task {name!r} is not one this vgg knows ({', '.join(TASKS)}); the run was written by a "
                        f"newer vgg: upgrade vgg to read it")
    return TASKS[name]
