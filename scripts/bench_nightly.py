"""Case n of scripts/bench.py: a cron night with nothing to do (`vgg train --if-changed` on an unchanged dataset and
config) against a bare `import tensorflow`, each a fresh process. Target: the night costs a small fraction of the
import (it decides before any framework loads)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from bench_common import CHECK, measure

TARGET = 0.25  # the night's wall time, at most this fraction of a TensorFlow import's


def nightly_case(data: Path, work: Path, repeats: int) -> list[dict]:
    """[{"program", "wall_s" (median), "cpu_s", "rss_mib"}] for the unchanged night and the TensorFlow import."""
    runs = work / "runs-n"
    night = [sys.executable, "-m", "vgg_cli", "train", "--if-changed", f"data.train_dir={data}", f"output.dir={runs}",
             "model.weights=none", "data.image_size=32", "train.epochs=1", "output.report=false",
             "promote.min_accuracy=0", "output.tensorboard=false"]
    print("  (n) training the run a night compares with (1 epoch, 32 px) ...", flush=True)
    measure(night, work / "n-first.log")
    n = 1 if CHECK["on"] else repeats
    rows = []
    for name, cmd in (("vgg train --if-changed (nothing changed)", night),
                      ("python -c 'import tensorflow'", [sys.executable, "-c", "import tensorflow"])):
        got = [measure(cmd, work / f"n-{len(rows)}-{i}.log") for i in range(n)]
        rows.append({"program": name, "wall_s": statistics.median(m["wall_s"] for m in got),
                     "cpu_s": statistics.median(m["cpu_s"] for m in got),
                     "rss_mib": max(m["rss_mib"] for m in got)})
    if "nothing to do" not in (work / "n-0-0.log").read_text():
        raise SystemExit(f"bench: the unchanged night did not answer 'nothing to do'; see {work / 'n-0-0.log'}")
    return rows


def format_nightly(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    ratio = rows[0]["wall_s"] / rows[1]["wall_s"]
    lines = ["", "| case n: program | wall s (median) | CPU s | peak RSS MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {r['program']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['rss_mib']:.0f} |" for r in rows]
    lines += ["", f"case n: the unchanged night takes {ratio:.2f}x a TensorFlow import "
                  f"(target <= {TARGET}x): {'met' if ratio <= TARGET else 'NOT met'}"]
    return lines
