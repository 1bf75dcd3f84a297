"""train.backend and its auto rule (vgg_cli.platform.backend): KERAS_BACKEND wins; a CUDA JAX is preferred; then TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TRAIN_ARGS
from vgg_cli.errors import UnavailableError
from vgg_cli.platform.backend import choose


def fake(*names):
    return lambda name: name in names


@pytest.mark.parametrize("installed, cuda, expected", [
    (("tensorflow", "jax"), False, "tensorflow"),  # the default install (this machine, CI)
    (("tensorflow", "jax"), True, "jax"),  # pip install 'vgg-cli[gpu]' on a GPU machine
    (("jax",), True, "jax"),  # the lent GPU machines: JAX with CUDA, no TensorFlow
    (("jax",), False, "jax"),
    (("torch",), False, "torch"),
])
def test_auto_rule(monkeypatch, installed, cuda, expected):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    name, why = choose("auto", installed=fake(*installed), cuda_jax=lambda: cuda)
    assert name == expected and why.startswith("auto: ")


def test_keras_backend_wins_and_explicit_settings_are_checked(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert choose("jax", installed=fake("jax")) == ("torch", "KERAS_BACKEND (over train.backend=jax)")
    monkeypatch.delenv("KERAS_BACKEND")
    assert choose("jax", installed=fake("jax", "tensorflow")) == ("jax", "train.backend=jax")
    with pytest.raises(UnavailableError, match="train.backend=torch: torch is not installed"):
        choose("torch", installed=fake("tensorflow"))
    with pytest.raises(UnavailableError, match="no Keras backend is installed"):
        choose("auto", installed=fake(), cuda_jax=lambda: False)


@pytest.mark.slow
def test_train_backend_jax_trains_on_jax_without_keras_backend_set(tmp_path, colour_data):
    pytest.importorskip("jax")
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    p = subprocess.run([sys.executable, "-m", "vgg_cli", "train", f"data.train_dir={colour_data}",
                        f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=1", "train.backend=jax",
                        "output.tensorboard=false", "promote.min_accuracy=0", "--json"],
                       capture_output=True, text=True, timeout=600, env={**env, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((Path(json.loads(p.stdout)["run"]) / "summary.json").read_text())
    assert summary["versions"]["backend"] == "jax" and summary["device"]["backend"] == "jax"
    assert "backend jax" in p.stderr
