"""train.distribute: the strategy choice (pure), MirroredStrategy over two logical CPU devices, and a two-worker
MultiWorkerMirroredStrategy job on localhost. Both distributed runs must end with the weights a single-device run
reaches: each global batch is split across replicas, the gradients averaged, the learning rate unchanged."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SIZE, make_colour_dataset
from vgg_cli.device import cluster_of, select_distribution
from vgg_cli.errors import ConfigError

# A new process whose TensorFlow sees the CPU as two logical devices (set before TF's runtime starts).
TWO_CPUS = ("import sys, tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
            "from vgg_cli.cli import main; main(sys.argv[1:])")
PLAIN = "import sys; from vgg_cli.cli import main; main(sys.argv[1:])"
# 18 training images in batches of 6: every global batch splits into equal halves, so the averaged gradient
# is exactly the single-device one. No dropout: the only randomness left is the (seeded) order.
ARGS = [f"data.image_size={SIZE}", "model.weights=none", "model.head.dense=[8]", "model.head.dropout=0.0",
        "train.epochs=3", "train.batch_size=6", "train.optimizer.learning_rate=0.003",
        "train.early_stopping_patience=0", "output.tensorboard=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    return (make_colour_dataset(root / "train", per_class=6, seed=1),
            make_colour_dataset(root / "val", per_class=2, seed=2))


def vgg_process(code: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env)


def finish(p: subprocess.Popen, timeout: int = 600) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, out, err


def head_weights(run: Path) -> list[np.ndarray]:
    from vgg_cli.model import load_model

    model = load_model(run / "model" / "last.keras")
    return [w for layer in model.layers if layer.name.startswith("head_") for w in layer.get_weights()]


def train_args(data, runs: Path, name: str, *extra: str) -> list[str]:
    train, val = data
    return ["train", f"data.train_dir={train}", f"data.val_dir={val}", f"output.dir={runs}", f"output.name={name}",
            *ARGS, *extra]


@pytest.fixture(scope="module")
def single_device_run(data, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("single") / "runs"
    code, out, err = finish(vgg_process(PLAIN, train_args(data, runs, "single", "train.distribute=none")))
    assert code == 0, err[-3000:]
    return Path(out.strip())


def test_mirrored_over_two_logical_cpus_matches_one_device(data, tmp_path, single_device_run):
    runs = tmp_path / "runs"
    code, out, err = finish(vgg_process(TWO_CPUS, train_args(data, runs, "mirrored", "train.distribute=mirrored")))
    assert code == 0, err[-3000:]
    run = Path(out.strip())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"]["distribute"] == "mirrored" and summary["device"]["replicas"] == 2
    assert "2 replicas" in err and "global batch 6" in err
    single = json.loads((single_device_run / "summary.json").read_text())
    assert summary["epochs_run"] == single["epochs_run"] == 3
    for a, b in zip(head_weights(run), head_weights(single_device_run)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert summary["best"]["val_accuracy"] == pytest.approx(single["best"]["val_accuracy"])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_one_model_and_only_the_chief_writes(data, tmp_path, single_device_run):
    runs = tmp_path / "runs"
    hosts = [f"localhost:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
        procs.append(vgg_process(PLAIN, train_args(data, runs, "cluster", "train.distribute=multi_worker"),
                                 env={"TF_CONFIG": tf_config}))
    (c0, out0, err0), (c1, out1, err1) = [finish(p) for p in procs]
    assert c0 == 0, err0[-3000:]
    assert c1 == 0, err1[-3000:]
    run = Path(out0.strip())
    assert run == (runs / "cluster").resolve() and out1.strip() == ""  # the worker prints no run
    assert "worker 1 of 2" in err1 and "the chief wrote the run" in err1
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == ["cluster", "latest",
                                                                                      "production"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"]["distribute"] == "multi_worker"
    assert summary["device"]["workers"] == 2 and summary["device"]["replicas"] == 2
    assert summary["epochs_run"] == 3
    for a, b in zip(head_weights(run), head_weights(single_device_run)):  # one model, as one process trains it
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode, backend, gpus, cpus, cluster, expected", [
    ("auto", "tensorflow", 0, 1, None, "none"),
    ("auto", "tensorflow", 1, 1, None, "none"),
    ("auto", "tensorflow", 2, 1, None, "mirrored"),
    ("auto", "tensorflow", 0, 1, (2, 1), "multi_worker"),
    ("auto", "tensorflow", 4, 1, (1, 0), "mirrored"),  # a one-task cluster is just this machine
    ("none", "tensorflow", 4, 1, (2, 0), "none"),
    ("mirrored", "tensorflow", 0, 2, None, "mirrored"),
    ("mirrored", "tensorflow", 2, 1, None, "mirrored"),
    ("multi_worker", "tensorflow", 0, 1, (3, 2), "multi_worker"),
    ("auto", "jax", 2, 1, (2, 0), "none"),
])
def test_strategy_choice(mode, backend, gpus, cpus, cluster, expected):
    assert select_distribution(mode, backend, gpus, cpus, cluster)[0] == expected


def test_strategy_errors_name_the_fix():
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        select_distribution("multi_worker", "tensorflow", 0, 1, None)
    with pytest.raises(ConfigError, match="needs the tensorflow backend"):
        select_distribution("mirrored", "jax", 2, 1, None)
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        cluster_of("{not json")
    with pytest.raises(ConfigError, match="not in its cluster"):
        cluster_of(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}))
    chief_first = json.dumps({"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]},
                              "task": {"type": "worker", "index": 1}})
    assert cluster_of(chief_first) == (3, 2)
    assert cluster_of(None) is None
