"""Shared fixtures: tiny generated datasets and one trained run reused by the CLI tests."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Colour classes a head on a frozen random backbone separates quickly; images are noisy and vary in shade.
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
SIZE = 32


def colour_image(rgb, rng: np.random.Generator, size: int = 40) -> Image.Image:
    base = np.array(rgb, dtype=np.float64) * rng.uniform(0.75, 1.0)
    arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_colour_dataset(root: Path, per_class: int = 12, seed: int = 0, classes=None, start: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes or COLOURS:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            colour_image(COLOURS[name], rng).save(folder / f"{name}_{i:03d}.png")
    return root


def vgg(*args: str) -> list[str]:
    """The command line of ``vgg ARGS`` in a fresh process, on this Python."""
    return [sys.executable, "-m", "vgg_cli", *args]


def start(args: list[str], **env: str):
    """``vgg ARGS`` in the background, stderr unbuffered, for tests that act while it runs."""
    import os
    import subprocess

    return subprocess.Popen(vgg(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def epoch_done(n: int, total: int) -> str:
    """The start of the line an epoch prints once it is committed ("epoch 2/4  loss ..."). A progress line inside
    the epoch starts "epoch 2/4: batch ..." (off a terminal, every few seconds: on a loaded machine, always)."""
    return f"epoch {n}/{total}  "


def wait_for(proc, prefix: str, timeout: float = 300) -> list[str]:
    """Read a started process's stderr lines until one starts with ``prefix``."""
    import time

    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(prefix):
            return lines
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError(f"process ended before {prefix!r}:\n{''.join(lines)}")


def fake_run(runs: Path, name: str, summary: dict | None) -> Path:
    """A run folder as far as the commands that only read folders need (runs, promote, rollback, --resume's
    search): config.yaml, classes.json, an empty model/ and, unless None, ``summary`` as summary.json."""
    import json

    run = runs / name
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("data: {}\n")
    (run / "classes.json").write_text('["a", "b"]')
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mode of every file below root (symlinks by their target text): proves 'never modified'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link:" + os.readlink(p), 0)
        elif p.is_file():
            try:
                data = p.read_bytes()
            except PermissionError:
                data = b"<unreadable>"
            out[rel] = (hashlib.sha256(data).hexdigest(), p.stat().st_mode)
    return out


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run ``vgg`` in-process through the real entry point; returns (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from vgg_cli.cli.main import main

    # main() maps errors to exit codes; CliRunner captures stdout, stderr and the SystemExit.
    result = CliRunner().invoke(_MainCommand(main), args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


class _MainCommand:
    """Adapter so CliRunner calls ``vgg_cli.cli.main.main`` (the console entry point) rather than the bare group."""

    def __init__(self, main):
        self._main = main
        self.name = "vgg"

    def main(self, args=None, prog_name=None, **_):
        self._main(list(args or []))


# Fixtures that train a real model or start processes: a test that uses one (directly or through another fixture)
# is slow by the marker's definition, so it is marked here, not by hand in every file.
SLOW_FIXTURES = {"trained_run", "trained_champion", "planted_run", "single_device_run", "jax_single_run", "patch_run",
                 "old_runs", "finished_run", "without_gpus", "night1"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # Heaviest files first (a slow test takes seconds to minutes, a fast one well under a second), each file's tests
    # in their order: scripts/test.sh hands whole files to its processes in this order as each one frees up, so
    # the long files start early and the run does not end on one process finishing a long file alone.
    weight: dict[str, int] = {}
    for item in items:
        weight[item.nodeid.split("::")[0]] = weight.get(item.nodeid.split("::")[0], 0) + (
            20 if item.get_closest_marker("slow") else 1)
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])  # stable: a file's order is kept


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("colours") / "train", per_class=12, seed=0)


@pytest.fixture(scope="session")
def colour_holdout(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("holdout") / "images", per_class=4, seed=99)


TRAIN_ARGS = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[32]", "model.head.dropout=0.0",
              "train.epochs=8", "train.batch_size=8", "train.optimizer.learning_rate=0.003",
              "train.early_stopping_patience=0"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, colour_data) -> dict:
    """One real `vgg train` through the CLI, shared by the tests that read a run back."""
    work = tmp_path_factory.mktemp("work")
    runs = work / "runs"
    before = tree_hashes(colour_data)
    code, out, err = run_cli(["train", f"data.train_dir={colour_data}", f"output.dir={runs}", *TRAIN_ARGS])
    assert code == 0, err
    return {"runs": runs, "run_dir": Path(out.strip().splitlines()[-1]), "stdout": out, "stderr": err,
            "data": colour_data, "data_hashes_before": before}
