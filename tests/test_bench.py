"""scripts/bench.py runs from a checkout and prints its tables (tiny sizes: this checks the script, not speed).

Most of each test's time is start-up, which no option changes: the bench measures every program as a fresh
process (Python, TensorFlow, JAX or torch, building VGG16; on JAX, XLA compiling it too). ``--check`` keeps every
table and the rows of every distinct program while starting fewer processes (the bare-Keras ceilings of case k in
one, the predict scripts in one, the PyTorch scripts in one; case m's first run is case k's blocks-4-5 run; no
warm-compile-cache or all-frozen JAX rerun, which tests/test_backends.py runs) and runs case groups side by side.
Both benches start together, when the first of these tests asks for them: each is mostly one process at a time,
so on two cores they overlap.
The sizes are the least the bench takes: 32 px is VGG16's smallest input, 8 images are 2 per class.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES, SCALE = 8, 2  # training images; the memory case's larger dataset has SCALE times as many
BENCH = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--check", "--images", str(IMAGES), "--image-size", "32"]
RUNS = {  # test -> (bench arguments, environment)
    "test_bench_runs_and_prints_every_table": (
        ["--predict-images", "4", "--one-image-size", "32", "--cases", "a,d,m,k,n", "--scale", str(SCALE), "--repeats", "1",
         "--ceiling", f"32:{IMAGES}:2"], {}),
    "test_bench_quality_case_runs_vgg_without_the_peer": (["--cases", "q", "--peer", "none"], {}),
    "test_bench_gpu_mode_runs_end_to_end_on_a_cpu": (
        ["--gpu", "--batch", "8", "--epochs", "2", "--workers", "1", "--no-torch-compile"], {"JAX_PLATFORMS": "cpu"}),
}
CEILING_PATHS = ("whole network trains", "blocks 4-5 on cached block-3 activations",
                 "head only + augment.flip=horizontal")


class Bench:
    """One bench.py process, its output in files (no pipe to fill while the other test reads its own)."""

    def __init__(self, args: list[str], env: dict, folder: Path):
        self.work, self.out, self.err = folder / "w", folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([*BENCH, *args, "--work", str(self.work), "--markdown"], stdout=out,
                                         stderr=err, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
                                         start_new_session=True)

    def result(self, timeout: float) -> str:
        code = self.proc.wait(timeout=timeout)
        out = self.out.read_text()
        assert code == 0, out[-3000:] + self.err.read_text()[-3000:]
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def benches(request, tmp_path_factory):
    """The bench runs of this module's selected tests, all started at once."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    started = {name: Bench(*RUNS[name], tmp_path_factory.mktemp(name[:40])) for name in RUNS if name in selected}
    yield started
    for bench in started.values():
        bench.stop()


def cells(out: str, start: str) -> list[list[str]]:
    """The Markdown table rows of ``out`` that begin with ``start``, split into cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith(start)]


def positive(text: str) -> bool:
    return float(text) > 0


@pytest.mark.slow
def test_bench_runs_and_prints_every_table(benches):
    bench = benches["test_bench_runs_and_prints_every_table"]
    out = bench.result(timeout=900)
    recipe, vgg = (cells(out, f"| (a) all blocks frozen, no aug, 10 ep | {who} |")[0]
                   for who in ("keras.io recipe", "vgg train"))
    assert all(positive(row[i]) for row in (recipe, vgg) for i in (2, 5))  # wall s, img/s
    assert "(target >= 10.0x)" in out
    assert "seeds" not in out  # --repeats 1: one seed
    # case k: every path, the ceiling and vgg, with the ratio on vgg's row and its target line
    for path in CEILING_PATHS:
        ceiling, vgg = cells(out, f"| {path} | 32 |")
        assert ceiling[2] == "bare Keras fit (ceiling)" and vgg[2].startswith("vgg train (")
        for row in (ceiling, vgg):
            assert row[3] == f"{IMAGES - 4}/4" and row[4] == "2", row  # vgg's split, read by the ceiling
            assert positive(row[5]) and positive(row[6]), row  # s/epoch, img/s
        assert ceiling[10] == "" and positive(vgg[10])
        assert f"- 32 px, {path}: vgg " in out and "x the ceiling (target >= 0.9x)" in out
    assert "vgg train (features)" in out and "vgg train (images)" in out
    for row in ("| vgg predict DIR |", "| per-image loop (load_img + predict) |",
                "| model.predict on preloaded arrays |", "| one image: vgg predict one.jpg (numpy engine, median of 1",
                "| one image: vgg predict --engine keras one.jpg (median of 1", "| one image: minimal Keras script"):
        assert positive(cells(out, row)[0][1]), row  # wall s
    # one image: the target (wall and the ratio to the script) and -v's split of vgg's wall
    target = next(line for line in out.splitlines() if line.startswith("- one image: vgg predict one.jpg"))
    assert "faster than the minimal Keras script" in target and "(target: <= 2 s and >= 2.3x)" in target
    assert "imports" in target and "model load" in target and "decode + compute" in target
    for n in (IMAGES, IMAGES * SCALE):
        assert positive(cells(out, f"| vgg train, {n} images, cache.ram_mb=16 |")[0][2])  # peak RSS
    assert "- memory: " in out and "command: python scripts/bench.py" in out
    # case n: the unchanged night and the TensorFlow import, with the ratio and its target
    for row in ("| vgg train --if-changed (nothing changed) |", "| python -c 'import tensorflow' |"):
        assert positive(cells(out, row)[0][1]), row
    assert "x a TensorFlow import (target <= 0.25x)" in out
    md = (bench.work / "bench.md").read_text()
    assert md.startswith("vgg bench, ") and "| case | program | wall s |" in md and "| path | px | program |" in md
    # vgg's own run used the feature cache and trained 10 epochs
    metrics = (bench.work / "runs-a" / "run" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 11


@pytest.mark.slow
def test_bench_quality_case_runs_vgg_without_the_peer(benches):
    """Case q with --peer none: vgg's rows (held-out accuracy of a real run, wall time) and the targets that need no
    peer; the transfer rows train on a backbone vgg trained on digits 0-4."""
    bench = benches["test_bench_quality_case_runs_vgg_without_the_peer"]
    out = bench.result(timeout=900)
    for case in ("q1 whole network, random init, 3 epochs", "q2 head only, random backbone, 10 epochs",
                 "q3 0-4 -> 5-9, head only, 10 epochs", "q3 0-4 -> 5-9, blocks 4-5, 10 epochs"):
        row = cells(out, f"| {case} | vgg |")[0]
        assert 0 <= float(row[2]) <= 1 and positive(row[3]), row
        assert not cells(out, f"| {case} | Ultralytics |")
    assert "- q2 head only, random backbone, 10 epochs: >= 0.95: " in out
    assert "- q3 0-4 -> 5-9, head only, 10 epochs: >= 0.757 (before): " in out
    runs = bench.work / "runs-q"
    weights = [(r / "summary.json") for r in (runs / "t-head").iterdir() if (r / "summary.json").is_file()]
    assert weights and "base04" in json.loads(weights[0].read_text())["weights"]


@pytest.mark.slow
def test_bench_gpu_mode_runs_end_to_end_on_a_cpu(benches):
    """The GPU mode with a tiny setting: the vgg rows on JAX (and on the torch backend when torch is installed)
    and, where torch is installed, the PyTorch programs; the table and its checks are printed and written."""
    bench = benches["test_bench_gpu_mode_runs_end_to_end_on_a_cpu"]
    out = bench.result(timeout=900)
    assert "| program | steady img/s (epochs 2+) | first epoch s | whole run s (wall) |" in out
    cold = cells(out, "| vgg, whole network + flip aug (cold compile cache) |")[0]
    assert " 0 hits" in cold[5] and positive(cold[1]) and positive(cold[2])
    assert cells(out, "| vgg, blocks 1-3 frozen (cached block-3 features) |")
    assert "compile cache warm" not in out and "all blocks frozen" not in out  # --check: tested elsewhere
    if importlib.util.find_spec("torch") is not None:
        for row in ("| same, KERAS_BACKEND=torch |", "| PyTorch: DataLoader(1 workers)",
                    "| PyTorch: images preloaded on the device (eager ceiling) |",
                    "| PyTorch: backbone frozen (forward every epoch) |"):
            found = cells(out, row)
            assert found and positive(found[0][1]), row
        assert "torch.compile" not in out  # --no-torch-compile
        assert "vs the DataLoader script" in out and "vs eager PyTorch on preloaded images" in out
    else:
        assert "PyTorch rows skipped: torch is not installed" in out
    assert (bench.work / "bench-gpu.md").read_text().startswith("vgg GPU bench, ")
