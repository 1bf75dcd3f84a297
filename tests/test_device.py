"""Precision and GPU selection: pure decisions tested without a GPU, and the CPU path applied for real."""

from __future__ import annotations

import keras
import pytest

from vgg_cli.config.schema import load_config
from vgg_cli.platform.device import Gpu, select_precision, setup_devices
from vgg_cli.errors import ConfigError

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


def test_setup_devices_on_this_cpu_machine(restore_policy):
    info = setup_devices(load_config(None, ["train.mixed_precision=auto"]).train)
    assert info.backend == keras.backend.backend() and info.gpus == [] and info.precision == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    info = setup_devices(load_config(None, ["train.mixed_precision=on"]).train)
    assert info.precision == "mixed_float16" and keras.mixed_precision.global_policy().name == "mixed_float16"


def test_asking_for_a_gpu_that_is_not_there_is_a_config_error(restore_policy):
    with pytest.raises(ConfigError, match=r"train.gpus \[0\] names GPU\(s\) \[0\] but 0 GPU\(s\) are visible; "
                                          r"set train.gpus=null to train on the CPU"):
        setup_devices(load_config(None, ["train.gpus=[0]"]).train)
