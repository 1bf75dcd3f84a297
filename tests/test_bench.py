"""scripts/bench.py runs from a checkout and prints its tables (tiny sizes: this checks the script, not speed).

Most of each test's minutes are start-up, which no option changes: the bench measures every program as a fresh
process (Python, TensorFlow, JAX or torch, building VGG16; in the GPU mode XLA compiling it too), 10 of them in the
CPU mode with --repeats 1 (case a trains vgg once, not once per seed; case d times each one-image program once)
and 10 in the GPU mode.
The sizes are the least the bench takes: 32 px is VGG16's smallest input, 8 images are 2 per class.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES, SCALE = 8, 2  # training images; the memory case's larger dataset has SCALE times as many


@pytest.mark.slow
def test_bench_runs_and_prints_every_table(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--images", str(IMAGES), "--image-size",
                           "32", "--predict-images", "4", "--cases", "a,d,m", "--scale", str(SCALE), "--repeats", "1",
                           "--work", str(tmp_path / "w"), "--markdown"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| (a) all blocks frozen, no aug, 10 ep | keras.io recipe |" in out
    assert "| (a) all blocks frozen, no aug, 10 ep | vgg train |" in out
    assert "(target >= 6.0x)" in out
    assert "seeds" not in out  # --repeats 1: one seed
    for row in ("| vgg predict DIR |", "| per-image loop (load_img + predict) |",
                "| model.predict on preloaded arrays |", "one image: minimal Keras script (median of 1)"):
        assert row in out
    assert f"vgg train, {IMAGES} images, cache.ram_mb=16" in out
    assert f"vgg train, {IMAGES * SCALE} images, cache.ram_mb=16" in out
    md = (tmp_path / "w" / "bench.md").read_text()
    assert md.startswith("vgg bench, ") and "| case | program | wall s |" in md
    # vgg's own run used the feature cache and trained 10 epochs
    metrics = (tmp_path / "w" / "runs-a" / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 11


@pytest.mark.slow
def test_bench_gpu_mode_runs_end_to_end_on_a_cpu(tmp_path):
    """The GPU mode with a tiny setting: every vgg row (JAX; torch backend when torch is installed) and, where
    torch is installed, the PyTorch programs; the table and its checks are printed and written."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--gpu", "--images", str(IMAGES),
                           "--image-size", "32", "--batch", "8", "--epochs", "2", "--workers", "1",
                           "--no-torch-compile", "--work", str(tmp_path / "w"), "--markdown"],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| program | steady img/s (epochs 2+) | first epoch s | whole run s (wall) |" in out
    cold = next(l for l in out.splitlines() if l.startswith("| vgg, whole network + flip aug (cold compile cache)"))
    warm = next(l for l in out.splitlines() if l.startswith("| same, second run (compile cache warm)"))
    assert " 0 hits" in cold and " 0 misses" in warm  # the second identical run compiled nothing
    assert "| vgg, all blocks frozen (cached features), 10 ep |" in out
    has_torch = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    if has_torch:
        for row in ("| same, KERAS_BACKEND=torch |", "| PyTorch: DataLoader(1 workers)",
                    "| PyTorch: images preloaded on the device (eager ceiling) |",
                    "| PyTorch: backbone frozen (forward every epoch) |"):
            assert row in out, row
        assert "torch.compile" not in out  # --no-torch-compile
        assert "warm-cache vgg run" in out and "vs eager PyTorch on preloaded images" in out
    else:
        assert "PyTorch rows skipped: torch is not installed" in out
    assert (tmp_path / "w" / "bench-gpu.md").read_text().startswith("vgg GPU bench, ")
