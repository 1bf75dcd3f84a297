"""Precision and GPU selection: pure decisions tested without a GPU, and the CPU path applied for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from vgg_cli.config.schema import load_config
from vgg_cli.platform.device import Gpu, select_precision, setup_devices

A100 = Gpu("NVIDIA A100", (8, 0))
V100 = Gpu("Tesla V100", (7, 0))
K80 = Gpu("Tesla K80", (3, 7))


@pytest.mark.parametrize("mode,gpus,policy", [
    ("auto", [], "float32"),
    ("auto", [A100], "mixed_float16"),
    ("auto", [V100, A100], "mixed_float16"),
    ("auto", [A100, K80], "float32"),  # every GPU must support it
    ("auto", [Gpu("unknown", None)], "float32"),
    ("on", [], "mixed_float16"),
    ("on", [K80], "mixed_float16"),
    ("off", [A100], "float32"),
])
def test_select_precision(mode, gpus, policy):
    chosen, note = select_precision(mode, gpus)
    assert chosen == policy and note


def test_on_without_gpu_explains_itself():
    _, note = select_precision("on", [])
    assert "without a GPU" in note


@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(before)


def _visible_gpus() -> int:
    """How many GPUs the active backend's own API lists in this process: what setup_devices must describe."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        try:
            return len(jax.local_devices(backend="gpu"))
        except RuntimeError:
            return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_setup_devices_describes_this_machine_and_picks_its_precision(restore_policy):
    """On any machine, with or without GPUs: every GPU the backend lists is described, and the policy applied is
    select_precision's choice for exactly those GPUs."""
    info = setup_devices(load_config(None, ["train.mixed_precision=auto"]).train)
    assert info.backend == keras.backend.backend() and len(info.gpus) == _visible_gpus()
    found = [Gpu(g["name"], g["compute_capability"]) for g in info.gpus]
    assert (info.precision, info.note) == select_precision("auto", found)
    assert keras.mixed_precision.global_policy().name == info.precision
    info = setup_devices(load_config(None, ["train.mixed_precision=on"]).train)
    assert info.precision == "mixed_float16" and keras.mixed_precision.global_policy().name == "mixed_float16"


# The CPU path itself, forced on any machine: CUDA_VISIBLE_DEVICES="" hides every GPU from CUDA, so from TensorFlow,
# JAX and torch alike (the variable train.gpus' documentation names), in a fresh process since a backend reads it
# once, when it first looks at its devices.
_WITHOUT_GPUS = textwrap.dedent("""
    import json, keras
    from vgg_cli.config.schema import load_config
    from vgg_cli.errors import ConfigError
    from vgg_cli.platform.device import setup_devices
    out = {"keras_backend": keras.backend.backend()}
    info = setup_devices(load_config(None, ["train.mixed_precision=auto"]).train)
    out["auto"] = {"backend": info.backend, "gpus": info.gpus, "precision": info.precision,
                   "policy": keras.mixed_precision.global_policy().name}
    info = setup_devices(load_config(None, ["train.mixed_precision=on"]).train)
    out["on"] = {"precision": info.precision, "policy": keras.mixed_precision.global_policy().name}
    try:
        setup_devices(load_config(None, ["train.gpus=[0]"]).train)
        out["gpus_0"] = None
    except ConfigError as e:
        out["gpus_0"] = str(e)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def without_gpus() -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_GPUS], env=env, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_setup_devices_without_a_gpu(without_gpus):
    auto, on = without_gpus["auto"], without_gpus["on"]
    assert without_gpus["keras_backend"] == keras.backend.backend()  # the same backend as this process
    assert auto["backend"] == keras.backend.backend() and auto["gpus"] == [] and auto["precision"] == "float32"
    assert auto["policy"] == "float32"
    assert on["precision"] == "mixed_float16" and on["policy"] == "mixed_float16"


def test_asking_for_a_gpu_that_is_not_there_is_a_config_error(without_gpus):
    assert without_gpus["gpus_0"] is not None, "train.gpus=[0] was accepted with no GPU visible"
    assert re.search(r"train.gpus \[0\] names GPU\(s\) \[0\] but 0 GPU\(s\) are visible; "
                     r"set train.gpus=null to train on the CPU", without_gpus["gpus_0"]), without_gpus["gpus_0"]
