#!/usr/bin/env python
"""Measure calibration and the out-of-distribution "unknown" on real data (docs/calibration.md, README).

Trains with ``vgg train`` on the digit scans (scikit-learn's 8x8 handwritten digits, 32 px, via
``scripts/make_sample_data.py --kind digits``) of classes 0-4 in several settings, then on held-out scans of 0-4
(images neither the model nor its temperature saw):

- ECE, MCE, NLL and Brier before and after temperature scaling (``vgg evaluate --json`` on the held-out folder);
- for each out-of-distribution score (mahalanobis, energy, max_logit): AUROC and the share rejected at the
  threshold that accepts 95% of the run's validation split, against held-out digits 5-9, the project's generated
  textures and the two photos of ``sklearn.datasets.load_sample_images``; the accuracy of the accepted held-out
  0-4 predictions against all of them.

The demo (``configs/demo.yaml`` on generated textures) is measured for calibration on its own held-out textures.
ImageNet weights are not reachable offline: every setting starts from random weights.

    .venv/bin/python scripts/measure_calibration.py WORK_DIR [--epochs 12] [--settings whole,head,smooth,demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IN, OUT = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]
COMMON = ["data.image_size=32", "model.weights=none", "train.batch_size=32", "output.tensorboard=false",
          "promote.min_accuracy=0", "cache.features=auto"]
SETTINGS = {
    "whole": ["model.freeze_blocks=[]", "model.head.dense=[64]", "model.head.dropout=0.0",
              "train.optimizer.learning_rate=auto"],
    "head": ["model.freeze_blocks=[1,2,3,4,5]", "model.head.dense=[256]", "model.head.dropout=0.5",
             "train.optimizer.learning_rate=0.001"],
    "smooth": ["model.freeze_blocks=[]", "model.head.dense=[64]", "model.head.dropout=0.0",
               "train.optimizer.learning_rate=auto", "train.label_smoothing=0.1"],
}


def sh(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "vgg_cli", *args], capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode not in (0, 3):
        raise SystemExit(f"vgg {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def make(args: list[str], out: Path) -> Path:
    if not out.is_dir():
        subprocess.run([sys.executable, str(HERE / "make_sample_data.py"), str(out), *args], check=True,
                       capture_output=True)
    return out


def subset(src: Path, classes: list[str], dest: Path) -> Path:
    """A copy of some class folders of ``src`` (vgg does not follow links to folders)."""
    import shutil

    for c in classes:
        if not (dest / c).exists():
            shutil.copytree(src / c, dest / c)
    return dest


def trained(work: Path, name: str, *args: str) -> Path:
    """The run ``name`` in WORK/runs: trained with ``args`` unless a finished one is there (a rerun goes on)."""
    run = work / "runs" / name
    if (run / "summary.json").is_file() and json.loads((run / "summary.json").read_text()).get("calibration"):
        return run
    if (run / "summary.json").is_file():  # trained, not finished (killed while finishing): finish it
        sh("train", "--resume", str(run))
        return run
    return Path(sh("train", *args, f"output.dir={work / 'runs'}", f"output.name={name}").strip())


def photos(dest: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    dest.mkdir(parents=True, exist_ok=True)
    for name, image in zip(load_sample_images().filenames, load_sample_images().images):
        Image.fromarray(image).save(dest / (Path(name).stem + ".png"))
    return dest


def outputs(model, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from vgg_cli.inference.predict import Options, predict_files

    got = [r for r in predict_files(model, files, 1, 64, options=Options(keep=("logits", "features")))
           if r.error is None]
    return np.stack([r.logits for r in got]), np.stack([r.features for r in got])


def files_of(folder: Path) -> list[str]:
    from vgg_cli.inference.predict import expand_inputs

    return expand_inputs([str(folder)])


def ood_table(run: Path, held_in: Path, others: dict[str, Path]) -> dict:
    from vgg_cli.evaluation.scoring import validation_set
    from vgg_cli.inference import ood
    from vgg_cli.model.load import class_names_of, load_model

    model = load_model(run / "model" / "best.keras")
    stats = ood.stats_for(model, run / "model" / "best.keras")
    val = validation_set(run)
    vz, vf = outputs(model, val.files)
    inside = files_of(held_in)
    iz, if_ = outputs(model, inside)
    classes = class_names_of(model)
    truth = np.asarray([classes.index(Path(f).parent.name) for f in inside])
    out = {}
    for method in ood.METHODS:
        s = ood.OODStats(method, 0.0, 0.95, "", stats.means, stats.whiten) if stats else None
        if s is None or (method == "mahalanobis" and stats.means is None):
            continue
        threshold = ood.threshold_for(s.score(vz, vf), 0.95)
        si = s.score(iz, if_)
        accepted = si <= threshold
        row = {"accepted_held_in": float(accepted.mean()),
               "accuracy_all": float(np.mean(iz.argmax(1) == truth)),
               "accuracy_accepted": float(np.mean(iz.argmax(1)[accepted] == truth[accepted])) if accepted.any()
               else None}
        for name, folder in others.items():
            oz, of = outputs(model, files_of(folder))
            so = s.score(oz, of)
            row[name] = {"auroc": ood.auroc(si, so), "rejected": float(np.mean(so > threshold)), "images": len(so)}
        out[method] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--settings", default="whole,head,smooth,demo")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every training (e.g. train.seed=1 to see a second draw)")
    a = ap.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    train = make(["--kind", "digits", "--part", "train", "--size", "32"], work / "digits-train")
    holdout = make(["--kind", "digits", "--part", "holdout", "--size", "32"], work / "digits-holdout")
    held_in = subset(holdout, IN, work / "holdout-0-4")
    others = {"digits 5-9": subset(holdout, OUT, work / "holdout-5-9"),
              "textures": make(["--size", "32", "--per-class", "25", "--seed", "5"], work / "textures-ood"),
              "photos": photos(work / "photos")}
    results = {}
    for name in a.settings.split(","):
        if name == "demo":
            tex = make(["--per-class", "60", "--seed", "0"], work / "textures")
            tex_hold = make(["--per-class", "10", "--seed", "7"], work / "textures-holdout")
            run = trained(work, "demo", "--config", str(HERE.parent / "configs" / "demo.yaml"),
                          f"data.train_dir={tex}", "promote.min_accuracy=0", *a.set)
            report = json.loads(sh("evaluate", "--run", str(run), str(tex_hold), "--json"))
            results[name] = {"held_out": report.get("calibration"), "summary": _summary(run)}
        else:
            run = trained(work, name, f"data.train_dir={train}", 'data.classes=["0","1","2","3","4"]', *COMMON,
                          *SETTINGS[name], f"train.epochs={a.epochs}", *a.set)
            report = json.loads(sh("evaluate", "--run", str(run), str(held_in), "--json"))
            results[name] = {"held_out": report.get("calibration"), "summary": _summary(run),
                             "ood": ood_table(run, held_in, others)}
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))


def _summary(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {"calibration": s.get("calibration"), "best": s.get("best")}


if __name__ == "__main__":
    main()
