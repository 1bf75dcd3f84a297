#!/usr/bin/env python3
"""Does two-phase fine-tuning beat head-only training at the same total epochs? Measure it on your data.

    python scripts/finetune_vs_head.py DATA_DIR HOLDOUT_DIR [--epochs 10] [--seeds 0 1 2] [-- KEY=VALUE ...]

For each seed: `vgg train` head-only for --epochs epochs (every block frozen), and `vgg train` with half the
epochs head-only then half with blocks 4-5 unfrozen (finetune.learning_rate); then `vgg evaluate` both on
HOLDOUT_DIR (a folder with the same class subfolders that neither run trained or validated on). Prints a table and
writes it as JSON to <work>/finetune_vs_head.json. KEY=VALUE after `--` go to both trainings (e.g.
model.weights=none data.image_size=64).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def vgg(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "vgg_cli", *args], capture_output=True, text=True)
    if proc.returncode not in (0, 3):  # 3: trained but not promoted, irrelevant here
        sys.exit(f"vgg {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("holdout")
    ap.add_argument("--epochs", type=int, default=10, help="total epochs of each run (default 10)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--finetune-lr", type=float, default=1e-4, help="phase 2 learning rate (default 1e-4)")
    ap.add_argument("--unfreeze", default="[4,5]", help="blocks phase 2 unfreezes (default [4,5])")
    ap.add_argument("--work", default="runs-finetune-vs-head")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args()  # KEY=VALUE overrides may come after the options (and after --)
    half = a.epochs // 2
    common = [f"data.train_dir={a.data}", "model.freeze_blocks=[1,2,3,4,5]", "train.early_stopping_patience=0",
              *a.overrides]
    variants = {"head only": [f"train.epochs={a.epochs}"],
                f"two-phase ({half}+{a.epochs - half}, unfreeze {a.unfreeze})": [
                    f"train.epochs={half}", f"finetune.epochs={a.epochs - half}",
                    f"finetune.unfreeze_blocks={a.unfreeze}", f"finetune.learning_rate={a.finetune_lr}"]}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in a.seeds:
        for i, (name, extra) in enumerate(variants.items()):
            runs = Path(a.work) / f"{'head' if i == 0 else 'two-phase'}-seed{seed}"
            out = json.loads(vgg("train", *common, *extra, f"train.seed={seed}", f"output.dir={runs}", "--json"))
            report = json.loads(vgg("evaluate", a.holdout, "--run", out["run"], "--json"))
            summary = json.loads((Path(out["run"]) / "summary.json").read_text())
            results[name].append({"seed": seed, "holdout_accuracy": report["accuracy"],
                                  "val_accuracy": out["best"].get("val_accuracy"),
                                  "seconds": summary["timings"]["this_session_total_s"]})
            print(f"{name:<40} seed {seed}: held-out {report['accuracy']:.3f}  val {out['best'].get('val_accuracy')}"
                  f"  {summary['timings']['this_session_total_s']:.0f}s", file=sys.stderr)
    print(f"\n| variant ({a.epochs} epochs in all) | held-out accuracy per seed | mean | s per run |")
    print("|---|---|---:|---:|")
    for name, rows in results.items():
        accs = [r["holdout_accuracy"] for r in rows]
        print(f"| {name} | {' / '.join(f'{x:.3f}' for x in accs)} | {statistics.mean(accs):.3f} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    (Path(a.work) / "finetune_vs_head.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
