"""scripts/bench.py runs from a checkout and prints its tables (tiny sizes: this checks the script, not speed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runs_and_prints_every_table(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--images", "16", "--image-size", "32",
                           "--predict-images", "12", "--cases", "a,d,m", "--scale", "2", "--work",
                           str(tmp_path / "w"), "--markdown"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| (a) all blocks frozen, no aug, 10 ep | keras.io recipe |" in out
    assert "| (a) all blocks frozen, no aug, 10 ep | vgg train |" in out
    assert "(target >= 6.0x)" in out
    for row in ("| vgg predict DIR |", "| per-image loop (load_img + predict) |",
                "| model.predict on preloaded arrays |", "one image: minimal Keras script"):
        assert row in out
    assert "vgg train, 16 images, cache.ram_mb=16" in out and "vgg train, 32 images, cache.ram_mb=16" in out
    md = (tmp_path / "w" / "bench.md").read_text()
    assert md.startswith("vgg bench, ") and "| case | program | wall s |" in md
    # vgg's own run used the feature cache and trained 10 epochs
    metrics = (tmp_path / "w" / "runs-a" / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 11
