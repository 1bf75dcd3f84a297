"""`vgg lr-find`: a learning-rate range test (Leslie Smith; fastai's ``lr_find``).

The model the config builds trains for a few hundred steps on the training split, the rate growing exponentially
from ``start`` to ``end``; the loss of each step is recorded (``train_on_batch``: that batch's loss, not a running
mean) and smoothed. The test stops when the smoothed loss exceeds 4x its minimum. The suggested rate is where the
smoothed loss falls fastest (steepest negative slope against log rate) before its minimum; the rate at the minimum
divided by 10 is reported too. Nothing is written to the runs; the model is thrown away. The same input path as
training (cached frozen-prefix features when it applies) keeps it fast.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np

from vgg_cli.data.pipeline import close_batches, train_batches
from vgg_cli.errors import DataError
from vgg_cli.fsio import write_json, write_text
from vgg_cli.reporting.plots import lr_range
from vgg_cli.training.callbacks import StopOnSignal
from vgg_cli.training.inputs import input_plan
from vgg_cli.training.plan import steps_per_epoch
from vgg_cli.training.session import open_session

log = logging.getLogger("vgg")
SMOOTHING = 0.95  # exponential moving average of the loss, bias-corrected
DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum


def range_rates(start: float, end: float, steps: int) -> np.ndarray:
    return start * (end / start) ** (np.arange(steps) / max(1, steps - 1))


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(rates: np.ndarray, smoothed: list[float]) -> tuple[float | None, float | None]:
    """(steepest-descent rate, rate at the minimum / 10); None where the curve does not allow one."""
    s = np.asarray(smoothed, dtype=np.float64)
    if s.size < 5 or not np.isfinite(s).any():
        return None, None
    skip = max(1, s.size // 10)  # the first steps are mostly the smoothing warming up on a few noisy losses
    low = skip + int(np.nanargmin(s[skip:]))
    at_min = float(rates[low]) / 10
    if low - skip < 2:
        return None, at_min
    slope = np.gradient(s[: low + 1], np.log10(rates[: low + 1]))
    i = skip + int(np.argmin(slope[skip:low + 1]))
    return (float(rates[i]) if slope[i] < 0 else None), at_min


def lr_find(cfg, runs, steps: int, start: float, end: float, out_dir: Path) -> dict:
    """Train ``steps`` batches with the rate rising from ``start`` to ``end``; write the plot, CSV and JSON. The
    model is the one training's session builds (phase 1); ``runs``: the runs folder (the sticky split, caches)."""
    session = open_session(cfg, runs, fail_fast=("weights",))
    cfg, phase = session.cfg, session.plan.phases[0]  # cfg with a warm start resolved
    model, weights = session.build(phase, learning_rate=start)
    log.info("lr-find: %s backbone, weights: %s", cfg.model.arch, weights)
    log.info("lr-find: frozen blocks %s, %s, %d steps from %g to %g", list(phase.frozen_blocks) or "none",
             cfg.train.optimizer.name, steps, start, end)
    rates = range_rates(start, end, steps)
    t0 = time.perf_counter()
    stopper = StopOnSignal()
    with stopper:
        plan = input_plan(session, model, stopper.check, phase.frozen_blocks)
        try:
            log.info("input: %s", plan.info["description"])
            losses, stopped = _sweep(session, plan, rates, stopper)
        finally:
            plan.source.close()
    if len(losses) < 5:
        raise DataError(f"the range test ran only {len(losses)} steps; it needs more training images or --steps")
    info = {"start": start, "end": end, "optimizer": cfg.train.optimizer.name,
            "frozen_blocks": list(phase.frozen_blocks), "batch_size": cfg.train.batch_size,
            "seconds": round(time.perf_counter() - t0, 2), "input": plan.info["path"], "stopped": stopped}
    return _report(rates[: len(losses)], losses, info, out_dir)


def _sweep(session, plan, rates: np.ndarray, stopper) -> tuple[list[float], str]:
    """One train step per rate until the rates run out or the loss diverges: (losses, why it stopped)."""
    cfg, steps = session.cfg, len(rates)
    per_epoch = steps_per_epoch(len(plan.train_ids), cfg.train.batch_size)
    ds = train_batches(plan.source, plan.train_ids, plan.labels, cfg.train.batch_size, cfg.train.seed, 0,
                       math.ceil(steps / per_epoch), session.plan.class_weight)
    losses: list[float] = []
    best = math.inf
    try:
        for step, (x, y, *w) in enumerate(itertools.islice(ds, steps)):
            stopper.check()
            plan.fit_model.optimizer.learning_rate = float(rates[step])
            losses.append(float(plan.fit_model.train_on_batch(x, y, sample_weight=w[0] if w else None,
                                                              return_dict=True)["loss"]))
            current = smooth(losses)[-1]
            if not math.isfinite(current):
                return losses, f"the loss became {current} at rate {rates[step]:.3g}"
            best = min(best, current)
            if step >= 10 and current > DIVERGED * best:
                return losses, f"the loss diverged (over {DIVERGED:g}x its minimum) at rate {rates[step]:.3g}"
    finally:
        close_batches(ds)
    return losses, f"reached {steps} steps"


def _report(rates: np.ndarray, losses: list[float], info: dict, out_dir: Path) -> dict:
    """Write lr_find.csv, lr_find.png and lr_find.json into ``out_dir``; returns the JSON's content."""
    smoothed = smooth(losses)
    steepest, at_min = suggest(rates, smoothed)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"suggested_learning_rate": steepest, "min_loss_rate_div10": at_min, "steps": len(losses), **info,
              "files": {"plot": str(out_dir / "lr_find.png"), "csv": str(out_dir / "lr_find.csv"),
                        "json": str(out_dir / "lr_find.json")}}
    write_text(out_dir / "lr_find.csv", "step,learning_rate,loss,smoothed_loss\n" + "".join(
        f"{i + 1},{r:.6g},{loss:.6f},{s:.6f}\n" for i, (r, loss, s) in enumerate(zip(rates, losses, smoothed))))

    lr_range(rates, losses, smoothed, steepest, out_dir / "lr_find.png")
    write_json(out_dir / "lr_find.json", result)
    return result
