"""Champion/challenger: the promotion decision for a trained run (``judge``), without side effects; carrying it
out is ``vgg_cli.promotion.production``.

After a training run, the new
model and the production model are evaluated on the same held-out images (the new run's validation split; its
split is sticky, so earlier runs never trained on those images) and the new one is promoted only if it is at
least as accurate, clears ``promote.min_accuracy`` and, unless ``promote.on_drift=hold`` and its new images drifted,
nothing holds it. After a class change the two are compared on the validation images of the classes both know, and
the new classes' own accuracy is recorded; ``promote.allow_class_change`` promotes with no comparison.
With no production model to compare against, the new model's accuracy is its best epoch's validation accuracy
(the same images, the same weights), so the run does not pay for a second pass over them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from vgg_cli.data.drift import describe
from vgg_cli.data.index import TRAIN, VAL
from vgg_cli.errors import DataError, VggError
from vgg_cli.evaluation.frozen import cached_scores, content_hashes
from vgg_cli.evaluation.scoring import EvalSet, score
from vgg_cli.runs.root import RunsRoot
from vgg_cli.runs.rundir import RunDir

log = logging.getLogger("vgg")


@dataclass(frozen=True)
class HeldOut:
    """The images a decision is made on, and how to score them: their files and true class names, their content
    hashes (to answer from a run's feature cache; None: the whole model on the images), the batch size and the
    runs folder whose caches are read (None: each run's own folder)."""
    files: list[str]
    truth: list[str]
    shas: list[str | None] | None = None
    batch_size: int = 32
    runs: RunsRoot | None = None

    def of_classes(self, classes: set[str]) -> HeldOut:
        """The images whose true class is one of ``classes``."""
        keep = [i for i, t in enumerate(self.truth) if t in classes]
        return replace(self, files=[self.files[i] for i in keep], truth=[self.truth[i] for i in keep],
                       shas=None if self.shas is None else [self.shas[i] for i in keep])


def evaluate(run: RunDir, images: HeldOut) -> dict:
    """Top-1 accuracy of a run's model on images, matching labels by class name: ``vgg evaluate``'s scoring.
    Images that cannot be read are left out (all of them unreadable scores 0)."""
    try:
        result = _score(run, images)
    except DataError:  # none readable
        return {"accuracy": 0.0, "images": 0, "unreadable": len(images.files)}
    return {"accuracy": result.accuracy, "images": len(result.truth), "unreadable": len(result.unreadable)}


def _score(run: RunDir, images: HeldOut):
    """``scoring.Scored`` of the run's model on the images: from the feature cache of the run's frozen blocks
    through its trainable rest when it has them (``vgg_cli.evaluation.frozen.cached_scores``: the same answers to
    float rounding; images the cache lacks go through the frozen blocks), else the whole model on the images."""
    from vgg_cli.model.load import load_model

    data = EvalSet(images.files, images.truth, "held-out images")
    model = load_model(run.model_file())  # a damaged model is its caller's to report, not a score of 0
    cached = None
    if images.shas is not None:
        cached = cached_scores(model, run, data, images.shas, images.batch_size, runs=images.runs)
    return cached if cached is not None else score(model, data, images.batch_size)


def min_accuracy_for(setting, truth: list[str]) -> tuple[float, bool, str]:
    """(threshold, strictly above?, how it was chosen) for promote.min_accuracy on these images' true classes.
    auto: more than always guessing their most common class scores (its share); when all are of one class,
    guessing is perfect and only 1.0 counts."""
    if setting != "auto":
        return float(setting), False, f"promote.min_accuracy {setting}"
    top, count = Counter(truth).most_common(1)[0] if truth else ("-", 0)
    share = count / len(truth) if truth else 0.0
    if share >= 1.0:
        return 1.0, False, f"promote.min_accuracy auto: all {len(truth)} images are {top!r}, so only 1.0 counts"
    return share, True, f"promote.min_accuracy auto: more than {share:.4f}, always guessing {top!r}"


def _comparable_production(runs: RunsRoot, classes: list[str]) -> tuple[Path | None, dict | None, str | None]:
    """(production run, its class change or None, why it cannot be used or None). A production run whose files are
    damaged is reported and treated as no comparable production, never a crash."""
    prod = runs.production()
    if prod is None:
        return None, None, None
    try:
        prod_classes = RunDir(prod).read_classes()
        RunDir(prod).model_file()
    except VggError as e:
        return prod, None, str(e)
    added = sorted(set(classes) - set(prod_classes))
    removed = sorted(set(prod_classes) - set(classes))
    return prod, ({"added": added, "removed": removed} if added or removed else None), None


def judge(rules, batch_size: int, paths: RunDir, index, best: dict | None = None,
          evaluation: dict | None = None, drift: dict | None = None, runs: RunsRoot | None = None) -> dict:
    """Evaluate the new run against production and decide, without changing anything: the decision record.
    ``rules``: the config's ``promote`` section; ``batch_size``: for scoring.

    ``best``: the best epoch's metrics row. When the new model only has to clear ``promote.min_accuracy`` (no
    production model with the same classes to compare with), its accuracy is that row's ``val_accuracy``: it was
    measured on exactly these held-out images by the weights in best.keras, so running the whole network over them
    again would only repeat it. ``evaluation``: the new model's ``vgg evaluate`` report on these images, made
    right after training (``output.report``): its accuracy is used. Production is scored on the same images (after
    a class change, those of the classes both know), from its feature cache where it can (``_score``). ``drift``:
    the run's summary.json "drift" (``promote.on_drift``)."""

    files, labels = index.judged_split()  # validation images with no copy in training (leaked ones left out)
    leaked = len(index.split(VAL)[0]) - len(files)
    held_out = bool(files)
    if not held_out:  # no held-out images: judge on the training images (said so in the record)
        files, labels = index.split(TRAIN)
    truth = [index.classes[i] for i in labels]
    images = HeldOut(files, truth, content_hashes(index, files), batch_size, runs)
    prod, class_change, unusable = _comparable_production(runs or RunsRoot.of_run(paths), index.classes)
    if unusable is not None:
        log.warning("production run %s cannot be compared (%s); judging the new model on its own", prod.name,
                    unusable)
    compare = prod is not None and class_change is None and unusable is None
    if held_out and evaluation is not None:
        new = {"accuracy": float(evaluation["accuracy"]), "images": int(evaluation["images"])}
        source = "evaluation/val: model/best.keras on the images"
    elif held_out and not compare and not leaked and best is not None and "val_accuracy" in best:
        new = {"accuracy": float(best["val_accuracy"]), "images": len(files)}
        source = f"validation of epoch {best['epoch']}"
    else:
        new = evaluate(paths, images)
        source = "model/best.keras on the images"
    threshold, strictly, rule = min_accuracy_for(rules.min_accuracy, truth)
    record: dict = {"promoted": False, "evaluated_on": {"images": new["images"], "held_out": held_out,
                                                        **({"leaked_left_out": leaked} if leaked else {})},
                    "min_accuracy": round(threshold, 6), "min_accuracy_rule": rule,
                    "new_accuracy": round(new["accuracy"], 6), "new_accuracy_from": source}
    reasons = []
    # (accuracies are shares of the same images: 1e-6 absorbs float32 metrics against exact fractions)
    if new["accuracy"] < threshold - 1e-6 or (strictly and new["accuracy"] <= threshold + 1e-6):
        reasons.append(f"accuracy {new['accuracy']:.4f} does not clear {rule}")
    if prod is not None:
        record["production_run"] = prod.name
    if unusable is not None:
        record["production_unreadable"] = unusable
    elif class_change is not None:
        record["class_change"] = class_change
        log.warning("classes changed from production %s (added %s, removed %s)", prod.name,
                    class_change["added"] or "none", class_change["removed"] or "none")
        if not rules.allow_class_change:
            reasons += _against_production_shared(record, prod, paths, images)
    elif compare:
        reasons += _against_production(record, prod, new, images)
    reasons += _drift_reasons(record, rules.on_drift, drift, paths.name)
    record["promoted"] = not reasons
    record["reason"] = "; ".join(reasons) if reasons else _why_promoted(record, prod, new["accuracy"], rule)
    return record


def _against_production(record: dict, prod: Path, new: dict, images: HeldOut) -> list[str]:
    """Score production on the same images into ``record``; the reason against the new model, if any."""
    old = _evaluate_production(prod, images)
    if old is None:
        record["production_unreadable"] = "its model could not be loaded"
        return []
    record["production_accuracy"] = round(old["accuracy"], 6)
    if new["accuracy"] < old["accuracy"]:
        return [f"accuracy {new['accuracy']:.4f} is below production {prod.name}'s {old['accuracy']:.4f} on the "
                f"same {new['images']} images"]
    return []


def _drift_reasons(record: dict, on_drift: str, drift: dict | None, run_name: str) -> list[str]:
    """promote.on_drift for a night whose new images drifted: warn = a warning line, judged as usual; hold = the
    reason it is not promoted."""
    if not drift or not drift.get("flagged"):
        return []

    record["drift"] = {"flagged": True, "p": drift.get("p"), "on_drift": on_drift}
    text = f"drift: {describe(drift)}"
    if on_drift == "hold":
        return [f"{text}; promote.on_drift=hold keeps it out of production: look at them, then vgg promote "
                f"{run_name} (or set promote.on_drift=warn)"]
    log.warning("%s; promote.on_drift=warn: judged as usual", text)
    return []


def _class_scores(run: RunDir, images: HeldOut) -> dict[str, list[int]]:
    """class name -> [correct, images] of a run's model on images (top-1 over all its classes; unreadable left
    out)."""
    result = _score(run, images)
    out: dict[str, list[int]] = {}
    for t, r in zip(result.truth, result.ranked):
        row = out.setdefault(result.classes[t], [0, 0])
        row[0] += int(r[0] == t)
        row[1] += 1
    return out


def _against_production_shared(record: dict, prod: Path, paths: RunDir, images: HeldOut) -> list[str]:
    """After a class change: the new model and production on the validation images of the classes both know (each
    answering with all its own classes; the truth matched to each model's classes by name); the new classes' own
    accuracy is recorded. The reason against the new model, if any."""
    change = record["class_change"]
    try:
        prod_classes = set(RunDir(prod).read_classes())
    except VggError as e:
        record["production_unreadable"] = str(e)
        return []
    shared = sorted(prod_classes & set(images.truth))
    change["shared"] = shared
    known = images.of_classes(prod_classes)
    text = (f"classes changed from production {prod.name} (added {change['added'] or 'none'}, removed "
            f"{change['removed'] or 'none'})")
    if not known.files:
        return [f"{text} and no validation image is of a class both know, so there is nothing to compare; set "
                f"promote.allow_class_change=true to promote it without a comparison"]
    try:
        ours = _class_scores(paths, images)
    except DataError:  # none readable
        ours = {}
    change["new_classes_accuracy"] = {c: round(ours[c][0] / ours[c][1], 6) for c in change["added"] if c in ours}
    correct, n = (sum(ours.get(c, [0, 0])[i] for c in shared) for i in (0, 1))
    new_shared = correct / n if n else 0.0
    old = _evaluate_production(prod, known)
    if old is None:
        record["production_unreadable"] = "its model could not be loaded"
        return []
    change["compared_on"] = {"images": n, "classes": len(shared)}
    record["production_accuracy"] = round(old["accuracy"], 6)
    record["new_accuracy_shared"] = round(new_shared, 6)
    if new_shared < old["accuracy"]:
        return [f"{text}: on the {n} validation images of the {len(shared)} classes both know, accuracy "
                f"{new_shared:.4f} is below production's {old['accuracy']:.4f}; set promote.allow_class_change=true "
                f"to promote it without a comparison"]
    return []


def _why_promoted(record: dict, prod: Path | None, accuracy: float, rule: str) -> str:
    if "new_accuracy_shared" in record:
        change = record["class_change"]
        news = ", ".join(f"{c} {a:.4f}" for c, a in change.get("new_classes_accuracy", {}).items()) or "none"
        return (f"classes changed; on the {change['compared_on']['images']} validation images of the classes both "
                f"know, accuracy {record['new_accuracy_shared']:.4f} is at least production {prod.name}'s "
                f"{record['production_accuracy']:.4f}; new classes' accuracy: {news}; overall {accuracy:.4f} "
                f"clears {rule}")
    if "production_accuracy" in record:
        return (f"accuracy {accuracy:.4f} is at least production {prod.name}'s {record['production_accuracy']:.4f} "
                f"on the same {record['evaluated_on']['images']} images")
    # nothing to compare with: no production, an unreadable one, or one with other classes (allowed)
    why = ("no production model yet" if prod is None else f"production {prod.name} is unreadable"
           if "production_unreadable" in record else "classes changed, allowed by promote.allow_class_change")
    return f"{why}; accuracy {accuracy:.4f} clears {rule}"


def _evaluate_production(prod: Path, images: HeldOut) -> dict | None:
    try:
        return evaluate(RunDir(prod), images)
    except VggError as e:
        log.warning("production run %s cannot be compared (%s); judging the new model on its own", prod.name, e)
        return None


