"""`vgg lr-find`: a learning-rate range test (Leslie Smith; fastai's ``lr_find``).

The model the config builds trains for a few hundred steps on the training split, the rate growing exponentially
from ``start`` to ``end``; the loss of each step is recorded (``train_on_batch``: that batch's loss, not a running
mean). The test stops when the loss's exponential average exceeds 4x its minimum. The suggestion (``advise``,
docs/lr-find.md) is read off the curve denoised without lag (a centred running median, then mean): the steepest
point of its fall, looked for only between 10% and 90% of the way down, and only when the fall is real (10% of the
starting loss and 12x the noise); a fall that ends at the loss of guessing the class shares is no learning, and one
that goes clearly below it counts from there. Otherwise no rate, and why and what to do. The rate at the lowest loss
divided by 10 is reported beside it and named when it is far off. Nothing is written to the runs; the model is
thrown away. The same input path as training (cached frozen-prefix features when it applies) keeps it fast.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgg_cli.data.pipeline import close_batches, train_batches
from vgg_cli.errors import DataError
from vgg_cli.fsio import write_json, write_text
from vgg_cli.reporting.plots import lr_range
from vgg_cli.training.callbacks import StopOnSignal
from vgg_cli.training.health import Baseline
from vgg_cli.training.inputs import input_plan
from vgg_cli.training.plan import steps_per_epoch
from vgg_cli.training.session import open_session

log = logging.getLogger("vgg")
SMOOTHING = 0.95  # exponential moving average of the loss, bias-corrected
DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
MIN_FALL = 0.10  # a fall of the denoised loss smaller than this share of its starting value is no fall
NOISE_MARGIN = 12.0  # ... and so is one under this many times the noise left in the denoised curve
FALL_EDGE = 0.10  # the fall runs from 10% to 90% of the way down; the steepest point is looked for in there
EDGE_NOISE = 4.0  # ... or from and to this many times the noise left in the denoised curve, when that is more
DISAGREE_DECADES = 1.5  # a rate at the lowest loss / 10 this many orders of magnitude off the suggestion is named
RULE = ("steepest fall of the denoised loss (a centred running median and mean) between 10% and 90% of its fall; "
        "a fall under 10% of the starting loss or 12x the noise does not count")


def range_rates(start: float, end: float, steps: int) -> np.ndarray:
    return start * (end / start) ** (np.arange(steps) / max(1, steps - 1))


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


@dataclass(frozen=True)
class Advice:
    """What the range test advises. ``rate``: the suggested learning rate, None when the curve gives none (then
    ``reason`` says why and what to do); ``min_div10``: the rate at the lowest loss / 10 (fastai's "minimum"),
    reported and checked against ``rate``, never suggested by itself; ``falls``: the rates between which the loss
    falls (from 10% to 90% of its drop); ``warnings``: what the user should know about the number."""
    rate: float | None
    min_div10: float | None
    falls: tuple[float, float] | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    from_guessing: bool = False  # the fall counted from the guessing loss down (see ``advise``)


def denoise(losses, width: int | None = None) -> np.ndarray:
    """The loss curve without its step-to-step noise and without lag: a running median, then a running mean, both
    centred on each step over ``width`` steps (default a tenth of the curve, at least 5; fewer at the ends). The
    exponential average (``smooth``) trails the curve by about 1/(1-beta) steps, over a decade of rates in a
    100-step test, which put its lowest point and steepest fall too far right (issue of 2026-12-07)."""
    x = np.asarray(losses, dtype=np.float64)
    width = denoise_width(x.size) if width is None else width
    half = width // 2

    def running(v: np.ndarray, fn) -> np.ndarray:
        return np.array([fn(v[max(0, i - half): i + half + 1]) for i in range(v.size)])

    return running(running(x, np.median), np.mean)


def denoise_width(steps: int) -> int:
    return max(5, (steps // 10) | 1)


def step_noise(losses) -> float:
    """The standard deviation of one step's loss around the curve: robust (median absolute deviation) and blind to
    the curve's trend (taken on differences of neighbouring steps)."""
    dx = np.diff(np.asarray(losses, dtype=np.float64))
    if dx.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(dx - np.median(dx))) / math.sqrt(2))


def suggest(rates: np.ndarray, losses) -> tuple[float | None, float | None]:
    """(suggested rate, rate at the lowest loss / 10); None where the curve does not allow one. See ``advise``."""
    advice = advise(rates, losses)
    return advice.rate, advice.min_div10


def advise(rates: np.ndarray, losses, guessing: Baseline | None = None) -> Advice:
    """The suggestion of a range test from its per-step ``losses`` (RULE): denoise the curve (``denoise``); its
    fall is from the highest point before its lowest one down to that lowest one, and counts only when it is at
    least MIN_FALL of the starting loss and NOISE_MARGIN times the noise left in the denoised curve; the rate
    suggested is the steepest point of the denoised curve (against log rate) between 10% and 90% of that fall.
    ``guessing``: what guessing the class shares scores (``health.Baseline``). A fall that ends no lower than its
    ``stall_loss`` (90% of ln K for K balanced classes, as training's health check) is no learning: no suggestion.
    A loss above the guessing loss is a new head's over-confidence, which a range test unlearns in its first steps
    (at its lowest rates); when the loss then falls clearly below guessing (by NOISE_MARGIN times the noise), the
    fall counts from the guessing loss down: that is the learning, and where the rate matters."""
    r, x = np.asarray(rates, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(x)
    r, x = r[keep], x[keep]
    if x.size < 5:
        return Advice(None, None, reason=f"only {x.size} steps had a finite loss; run more --steps")
    d = denoise(x)
    low = int(np.argmin(d))
    min_div10 = float(r[_lowest_step(x, low)]) / 10
    top_i = int(np.argmax(d[: low + 1]))
    top, bottom = float(d[top_i]), float(d[low])
    noise = step_noise(x) / math.sqrt(denoise_width(x.size))
    no_fall = _no_fall(r, top, bottom, noise, guessing)
    if no_fall:
        return Advice(None, min_div10, reason=no_fall)
    from_guessing = (guessing is not None and top > guessing.prior_loss
                     and guessing.prior_loss - bottom >= NOISE_MARGIN * noise)
    if from_guessing:
        top_i = int(np.nonzero(d[: low + 1] >= guessing.prior_loss)[0][-1])  # learning: from guessing level down
        top = guessing.prior_loss
    edge = max(FALL_EDGE * (top - bottom), EDGE_NOISE * noise)  # at most a third of the fall (4 / NOISE_MARGIN)
    start = max(i for i in range(top_i, low + 1) if d[i] >= top - edge)
    end = min(j for j in range(start, low + 1) if d[j] <= bottom + edge)
    slope = np.gradient(d, np.log10(r))
    i = start + int(np.argmin(slope[start: end + 1]))
    rate, falls = float(r[i]), (float(r[start]), float(r[end]))
    cut = _cut_off(d, top_i, low, edge / 2)
    return Advice(rate, min_div10, falls, warnings=_warnings(r, rate, min_div10, falls, low, cut),
                  from_guessing=from_guessing)


def _lowest_step(x: np.ndarray, low: int) -> int:
    """The step of the lowest loss: the lowest single loss within the denoising window around the denoised curve's
    lowest point ``low`` (the running mean moves the lowest point of a lopsided valley by a few steps)."""
    half = denoise_width(x.size) // 2
    first = max(0, low - half)
    return first + int(np.argmin(x[first: low + half + 1]))


def _no_fall(r: np.ndarray, top: float, bottom: float, noise: float, guessing: Baseline | None) -> str | None:
    """Why the curve gives no suggestion (what it did, and what to do), or None when its fall counts."""
    span = f"between {r[0]:.2g} and {r[-1]:.2g}"
    if top <= bottom:
        return (f"the loss only rose {span}, from its first step on; lower --start (now {r[0]:.2g}) to see it "
                f"fall, or check the data and labels")
    drop = top - bottom
    if drop < MIN_FALL * abs(top) or drop < NOISE_MARGIN * noise:
        return (f"the loss did not fall meaningfully {span}: smoothed, from {top:.3g} to {bottom:.3g} at its lowest "
                f"({drop / abs(top):.0%}; the step-to-step noise alone moves it by about {noise:.2g}); widen the "
                f"range (a lower --start, a higher --end), run more --steps, or check the data and labels")
    if guessing is not None and bottom >= guessing.stall_loss:
        return (f"the loss fell from {top:.3g} only to {bottom:.3g}, not below what guessing the class shares "
                f"scores ({guessing.describe_loss()}): the model grew less over-confident but did not learn in "
                f"{r.size} steps, so the fall shows no rate that learns; run more --steps (e.g. --steps "
                f"{max(300, 3 * r.size)}), start from pretrained weights (model.weights=imagenet), or train with "
                f"train.optimizer.learning_rate=auto")
    return None


def _cut_off(d: np.ndarray, top_i: int, low: int, edge: float) -> tuple[bool, bool]:
    """(was the loss already falling at the first step, still falling at the last one): its highest point is within
    the first half window and it falls by more than ``edge`` over the next window; alike at the end."""
    w = denoise_width(d.size)
    first = top_i <= w // 2 and d[top_i] - d[min(top_i + w, low)] > edge
    last = low >= d.size - 1 - w // 2 and d[max(low - w, top_i)] - d[low] > edge
    return bool(first), bool(last)


def _warnings(r: np.ndarray, rate: float, min_div10: float, falls: tuple[float, float], low: int,
              cut: tuple[bool, bool]) -> tuple[str, ...]:
    """What to know about a suggestion: a fall cut off by --start or --end, a rate at the lowest loss / 10 far off."""
    out = []
    if cut[0]:
        out.append(f"the loss was already falling at --start ({r[0]:.2g}); the suggestion may be too low: a lower "
                   f"--start shows where the fall begins")
    if cut[1]:
        out.append(f"the loss was still falling at the last rate tried ({r[-1]:.2g}); a higher --end (or more "
                   f"--steps, when the test stopped early) shows where it stops falling")
    gap = math.log10(min_div10 / rate)
    if gap > DISAGREE_DECADES:
        floor = math.log10(r[low] / falls[1])
        why = (f"the loss has finished falling at {falls[1]:.2g} and stays near its lowest for {floor:.1f} orders "
               f"of magnitude after that, so noise decides where its lowest point lies" if floor >= 1 else
               f"the loss falls over {math.log10(falls[1] / falls[0]):.1f} orders of magnitude ({falls[0]:.2g} to "
               f"{falls[1]:.2g}), fastest at {rate:.2g}, and the lowest loss / 10 is only a rule of thumb")
        out.append(f"the rate at the lowest loss / 10 ({min_div10:.2g}) is {gap:.1f} orders of magnitude above the "
                   f"suggested {rate:.2g}; the suggestion is the one used: {why}; to check, train 3 epochs with "
                   f"each (train.epochs=3) and compare")
    return tuple(out)


def advice_lines(advice: Advice) -> list[str]:
    """What ``vgg lr-find`` prints as its advice, one line each (lr_find.json's "advice"); the warnings are logged."""
    if advice.rate is not None:
        lo, hi = advice.falls
        what = "below what guessing scores" if advice.from_guessing else "which falls"
        lines = [(f"suggested learning rate: {advice.rate:.2g} (steepest fall of the loss, {what} from {lo:.2g} "
                  f"to {hi:.2g}): train.optimizer.learning_rate={advice.rate:.2g}")]
    else:
        lines = [f"suggested learning rate: none: {advice.reason}"]
    if advice.min_div10 is not None:
        note = ""
        if advice.rate is None:
            note = " (not advised: without a suggestion there is nothing to check it against; see above)"
        elif math.log10(advice.min_div10 / advice.rate) > DISAGREE_DECADES:
            note = " (not used: far above the suggestion; see the warning)"
        lines.append(f"rate at the lowest loss / 10: {advice.min_div10:.2g}{note}")
    return lines


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
    guessing = Baseline.of(plan.labels[plan.train_ids], [], session.plan.n_classes, cfg.train.label_smoothing)
    return _report(rates[: len(losses)], losses, info, out_dir, guessing)


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


def _report(rates: np.ndarray, losses: list[float], info: dict, out_dir: Path,
            guessing: Baseline | None = None) -> dict:
    """Write lr_find.csv, lr_find.png and lr_find.json into ``out_dir``; returns the JSON's content."""
    smoothed, finite = smooth(losses), np.isfinite(losses)
    denoised = np.full(len(losses), np.nan)
    denoised[finite] = denoise(np.asarray(losses)[finite])  # as ``advise`` sees it: the finite steps
    advice = advise(rates, losses, guessing)
    for line in advice.warnings:
        log.warning("warning: %s", line)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"suggested_learning_rate": advice.rate, "min_loss_rate_div10": advice.min_div10,
              "falling_region": list(advice.falls) if advice.falls else None, "no_suggestion_reason": advice.reason,
              "fall_from_guessing_loss": advice.from_guessing,
              "warnings": list(advice.warnings), "advice": advice_lines(advice), "rule": RULE,
              "steps": len(losses), **info,
              "files": {"plot": str(out_dir / "lr_find.png"), "csv": str(out_dir / "lr_find.csv"),
                        "json": str(out_dir / "lr_find.json")}}
    write_text(out_dir / "lr_find.csv", "step,learning_rate,loss,smoothed_loss,denoised_loss\n" + "".join(
        f"{i + 1},{r:.6g},{loss:.6f},{s:.6f},{dn:.6f}\n"
        for i, (r, loss, s, dn) in enumerate(zip(rates, losses, smoothed, denoised))))
    lr_range(rates, losses, denoised, advice.rate, out_dir / "lr_find.png", falls=advice.falls,
             fall_label="loss falls below guessing" if advice.from_guessing else "loss falls",
             guess_loss=guessing.prior_loss if guessing is not None else None)
    write_json(out_dir / "lr_find.json", result)
    return result
