#!/usr/bin/env python3
"""Held-out accuracy of trained runs with each test-time augmentation (vgg evaluate --tta ...).

    python scripts/tta_effect.py HOLDOUT RUN [RUN ...]

Prints a Markdown table: one row per run and TTA mode, with accuracy, the change against no TTA and the seconds
the evaluation took (TTA multiplies the model's work by the number of variants).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODES = ("none", "flip", "shift", "flip+shift")


def evaluate(holdout: str, run: str, mode: str, out: Path) -> tuple[float, int, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vgg_cli", "evaluate", holdout, "--run", run, "--tta", mode, "--out",
                        str(out), "--json"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if p.returncode != 0:
        raise SystemExit(f"vgg evaluate failed for {run} --tta {mode}:\n{p.stderr[-2000:]}")
    report = json.loads(p.stdout)
    return report["accuracy"], report["images"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("holdout")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default="tta-effect", help="folder for the evaluation reports")
    args = ap.parse_args()
    print("| run | TTA | held-out accuracy | change | evaluation s |")
    print("|---|---|---:|---:|---:|")
    for run in args.runs:
        base = None
        for mode in MODES:
            acc, n, secs = evaluate(args.holdout, run, mode, Path(args.out) / Path(run).name / mode.replace("+", "_"))
            base = acc if base is None else base
            print(f"| {Path(run).name} | {mode} | {acc:.4f} ({round(acc * n)}/{n}) | {acc - base:+.4f} | {secs:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
