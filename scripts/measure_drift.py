"""Measure drift between nights and classes that come and go on the digit scans (docs/cron.md has the figures).

    python scripts/measure_drift.py drift WORK     ten ordinary nights and drifted ones (inverted, blurred, darker)
                                                   through vgg's own night check (scan + night_drift), no training
    python scripts/measure_drift.py features WORK  the same nights, each a real one-epoch `vgg train` (head-only on
                                                   cached features), so the frozen-feature test is measured too
    python scripts/measure_drift.py classes WORK   a night adding digit 9: warm start from production, promoted
                                                   only when at least as accurate on digits 0-8 (3 small trainings)

WORK is a scratch folder (made, and reused between steps). The digit scans need scikit-learn. Training runs are
small: 32 px, a random backbone (no ImageNet weights offline) frozen whole, so the head trains on cached features.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from measure_data_trust import digits  # noqa: E402  (the digit scans, made once per work folder)

ARGS = ["data.image_size=32", "model.weights=none", "model.freeze_blocks=[1,2,3,4,5]", "model.head.dense=[64]",
        "model.head.dropout=0.0", "train.epochs=12", "train.batch_size=32", "train.seed=0",
        "train.early_stopping_patience=0", "train.optimizer.learning_rate=0.003", "output.report=false",
        "output.tensorboard=false"]
DRIFTS = {
    "inverted": lambda img: Image.fromarray(255 - np.asarray(img)),
    "blurred": lambda img: img.filter(ImageFilter.GaussianBlur(2)),
    "darker": lambda img: Image.fromarray((np.asarray(img) * 0.8).astype(np.uint8)),
}



def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.png"))


def _place(files: list[Path], src: Path, dest: Path, transform=None) -> None:
    for f in files:
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if transform is None:
            os.link(f, target)
        else:
            transform(Image.open(f).convert("RGB")).save(target.with_name("night-" + target.name))


def _config(data: Path, runs: Path):
    from vgg_cli.config.schema import load_config

    return load_config(None, [f"data.train_dir={data}", f"output.dir={runs}", *ARGS])


def drift(work: Path, n_previous: int, n_new: int, train: bool = False) -> None:
    """Night 1 trains on ``n_previous`` random scans (its manifest is what the check reads); each later night adds
    ``n_new`` other scans: ordinary nights plain, drifted nights transformed. ``train``: each night is a real
    `vgg train` (one epoch, head-only on cached features), so its summary has the frozen-feature test too."""
    from vgg_cli.runs.root import RunsRoot
    from vgg_cli.training.prepare import night_drift, scan_dataset

    pool = digits(work)
    files = _files(pool)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(files))
    previous, rest = [files[i] for i in order[:n_previous]], [files[i] for i in order[n_previous:]]
    nights = [(f"ordinary {k}", None, k) for k in range(1, 11)] + [(name, name, 100) for name in DRIFTS]
    rows = []
    for name, kind, seed in nights:
        data, runs = work / "night" / "data", work / "night" / "runs"
        shutil.rmtree(work / "night", ignore_errors=True)
        _place(previous, pool, data)
        cfg0 = _config(data, runs)
        index = scan_dataset(cfg0, RunsRoot.of(cfg0))
        run = runs / "night1"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("data: {}\n")
        (run / "data.json").write_text(json.dumps(index.manifest()))
        os.symlink("night1", runs / "latest")
        new = [rest[i] for i in np.random.default_rng(seed).choice(len(rest), n_new, replace=False)]
        _place(new, pool, data, DRIFTS[kind] if kind else None)
        cfg = _config(data, runs)
        if train:
            r = _train(data, runs, "train.epochs=1", f"cache.dir={work / 'feature-cache'}")
            d = json.loads((Path(r["run"]) / "summary.json").read_text())["drift"]
        else:
            d = night_drift(cfg, RunsRoot.of(cfg), scan_dataset(cfg, RunsRoot.of(cfg)))
        rows.append((name, d["flagged"], d["p"], d["images"]["p"], d["classes"]["p"],
                     d.get("features", {}).get("p", float("nan")), d.get("seconds")))
    print(f"\nprevious night: {n_previous} scans (its training split is the reference, at most 300 sampled); "
          f"each night adds {n_new} others")
    print(f"{'night':<12} {'flagged':>7} {'p':>8} {'p images':>9} {'p classes':>9} {'p features':>10} {'check s':>8}")
    for name, flagged, p, pi, pc, pf, s in rows:
        print(f"{name:<12} {str(flagged):>7} {p:>8.4f} {pi:>9.4f} {pc:>9.4f} {pf:>10.4f} {s:>8.2f}")
    ordinary = [r for r in rows if r[0].startswith("ordinary")]
    print(f"ordinary nights flagged: {sum(r[1] for r in ordinary)} of {len(ordinary)}; drifted nights flagged: "
          f"{sum(r[1] for r in rows if not r[0].startswith('ordinary'))} of {len(DRIFTS)}")


def _train(data: Path, runs: Path, *extra: str) -> dict:
    from tests.conftest import run_cli

    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", "--json", *ARGS, *extra])
    if not out.strip():
        sys.exit(err)
    result = json.loads(out)
    result["exit_code"] = code
    return result


def classes(work: Path) -> None:
    """Night 1: digits 0-8. Night 2: digit 9 added, warm-started from production; and the same night trained
    badly (one epoch at a learning rate of 1e-7, from random weights), from the same production."""
    pool = digits(work)
    base = work / "classes"
    shutil.rmtree(base, ignore_errors=True)
    data = base / "digits"
    old = [f for f in _files(pool) if f.parent.name != "9"]
    _place(old, pool, data)
    first = _train(data, base / "runs")
    print("night 1 (digits 0-8):", first["promotion"]["reason"])
    shutil.copytree(base / "runs", base / "runs-bad", symlinks=True, copy_function=os.link,
                    ignore=shutil.ignore_patterns(".lock"))
    _place([f for f in _files(pool) if f.parent.name == "9"], pool, data)
    for name, runs, extra in (("warm", base / "runs", ["model.weights=production"]),
                              ("bad", base / "runs-bad", ["train.epochs=1", "train.optimizer.learning_rate=1e-7"])):
        r = _train(data, runs, *extra)
        p = r["promotion"]
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        print(f"\nnight 2 ({name}): exit {r['exit_code']}, promoted {p['promoted']}")
        print("  weights:", summary["weights"])
        print(f"  on digits 0-8 ({p['class_change'].get('compared_on')}): new {p.get('new_accuracy_shared')}, "
              f"production {p.get('production_accuracy')}; new class accuracy "
              f"{p['class_change'].get('new_classes_accuracy')}")
        print("  reason:", p["reason"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["drift", "features", "classes"])
    ap.add_argument("work", type=Path)
    ap.add_argument("--previous", type=int, default=700, help="drift: scans of the previous night")
    ap.add_argument("--new", type=int, default=150, help="drift: scans each night adds")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.step in ("drift", "features"):
        drift(args.work, args.previous, args.new, train=args.step == "features")
    else:
        classes(args.work)


if __name__ == "__main__":
    main()
