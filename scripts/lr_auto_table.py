#!/usr/bin/env python3
"""Which learning rate fits which freeze setting? Measure `train.optimizer.learning_rate` values (auto included)
across freeze settings and seeds, scored on held-out images.

    python scripts/lr_auto_table.py DATA_DIR HOLDOUT_DIR [--rates 0.001 auto] [--seeds 1 2 3] [KEY=VALUE ...]

Settings: head only (every conv block frozen), blocks 4-5 trainable, the whole backbone trainable; each with
model.weights from the KEY=VALUE arguments (e.g. model.weights=none data.image_size=48). For each run: `vgg train`,
then `vgg evaluate HOLDOUT_DIR` on the run's best model. Prints a Markdown table (held-out accuracy per seed, mean,
the promotion decision) and writes it as JSON to <work>/lr_auto_table.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {"head only (blocks 1-5 frozen)": "[1,2,3,4,5]", "blocks 4-5 trainable": "[1,2,3]",
            "whole backbone trainable": "[]"}


def vgg(*args: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "vgg_cli", *args], capture_output=True, text=True)
    if proc.returncode not in (0, 3, 4):  # 3: not promoted, 4: diverged; both are results here
        sys.exit(f"vgg {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode, proc.stdout


def one_run(a, setting: str, freeze: str, rate: str, seed: int) -> dict:
    epochs = a.whole_epochs if freeze == "[]" else a.epochs
    runs = Path(a.work) / f"{freeze.strip('[]').replace(',', '') or 'none'}-lr{rate}-seed{seed}"
    code, out = vgg("train", f"data.train_dir={a.data}", f"model.freeze_blocks={freeze}", f"train.epochs={epochs}",
                    f"train.optimizer.learning_rate={rate}", "train.early_stopping_patience=0",
                    f"train.seed={seed}", f"output.dir={runs}", "output.tensorboard=false", *a.overrides, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    row = {"setting": setting, "rate": rate, "seed": seed, "epochs": epochs, "exit_code": code,
           "run_status": res.get("run_status"), "promoted": res.get("promoted"), "holdout_accuracy": None}
    summary = json.loads((Path(res["run"]) / "summary.json").read_text())
    row["rate_used"] = summary["phases"][0]["learning_rate"]
    row["seconds"] = summary["timings"]["this_session_total_s"]
    if (Path(res["run"]) / "model" / "best.keras").is_file():
        _, report = vgg("evaluate", a.holdout, "--run", res["run"], "--json")
        row["holdout_accuracy"] = json.loads(report)["accuracy"]
    print(f"{setting:<32} rate {rate:<7} seed {seed}: held-out {row['holdout_accuracy']}  exit {code}  "
          f"{row['seconds']:.0f}s", file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("holdout")
    ap.add_argument("--rates", nargs="+", default=["0.001", "auto"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the head-only and blocks 4-5 runs (10)")
    ap.add_argument("--whole-epochs", type=int, default=3, help="epochs of the whole-backbone runs (3)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS.values()), default=list(SETTINGS.values()),
                    help="model.freeze_blocks values to measure (default: all three)")
    ap.add_argument("--work", default="runs-lr-auto")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args()
    rows = [one_run(a, name, freeze, rate, seed) for name, freeze in SETTINGS.items() if freeze in a.settings
            for rate in a.rates for seed in a.seeds]
    print("\n| setting | learning_rate (used) | epochs | held-out accuracy per seed | mean | promoted |")
    print("|---|---|---:|---|---:|---|")
    for name in SETTINGS:
        for rate in a.rates:
            group = [r for r in rows if r["setting"] == name and r["rate"] == rate]
            if not group:
                continue
            accs = [r["holdout_accuracy"] for r in group]
            shown = " / ".join("-" if x is None else f"{x:.3f}" for x in accs)
            mean = statistics.mean(x or 0.0 for x in accs)
            promoted = " / ".join("yes" if r["promoted"] else f"no ({r['run_status']})" for r in group)
            print(f"| {name} | {rate} ({group[0]['rate_used']:g}) | {group[0]['epochs']} | {shown} | {mean:.3f} | "
                  f"{promoted} |")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    (Path(a.work) / "lr_auto_table.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
