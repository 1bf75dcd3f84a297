"""train.distribute: the choice (pure); on TensorFlow MirroredStrategy over two logical CPU devices and a two-worker
MultiWorkerMirroredStrategy job on localhost; on JAX keras.distribution.DataParallel over two forced host devices
and over two processes on localhost (keras.distribution.initialize, Gloo). Every distributed run must end with the
weights a single-device run reaches: each global batch is split across replicas, the gradients averaged, the
learning rate unchanged."""

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
from vgg_cli.errors import ConfigError
from vgg_cli.platform.distribute import Split, cluster_of, keras_cluster_of, pad_batch, select_distribution

# A new process whose TensorFlow sees the CPU as two logical devices (set before TF's runtime starts).
TWO_CPUS = ("import sys, tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
            "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
            "from vgg_cli.cli.main import main; main(sys.argv[1:])")
PLAIN = "import sys; from vgg_cli.cli.main import main; main(sys.argv[1:])"
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
    # KERAS_BACKEND too: an in-process test before this one may have set it, and it would override train.backend
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TF_CONFIG", "KERAS_BACKEND") and not k.startswith("KERAS_DISTRIBUTION")}
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
    from vgg_cli.model.load import load_model

    model = load_model(run / "model" / "last.keras")
    return [w for layer in model.layers if layer.name.startswith("head_") for w in layer.get_weights()]


def train_args(data, runs: Path, name: str, *extra: str) -> list[str]:
    train, val = data
    return ["train", f"data.train_dir={train}", f"data.val_dir={val}", f"output.dir={runs}", f"output.name={name}",
            *ARGS, *extra]


@pytest.fixture(scope="module")
def single_device_run(data, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("single") / "runs"
    code, out, err = finish(vgg_process(PLAIN, train_args(data, runs, "single", "train.distribute=none",
                                                          "output.report=false")))
    assert code == 0, err[-3000:]
    return Path(out.strip())


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_one_device(data, tmp_path, single_device_run):
    runs = tmp_path / "runs"
    code, out, err = finish(vgg_process(TWO_CPUS, train_args(data, runs, "mirrored", "train.distribute=mirrored",
                                                                  "output.report=false")))
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


@pytest.mark.slow
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
    ("auto", "jax", 1, 1, None, "none"),
    ("auto", "jax", 2, 1, None, "mirrored"),
    ("auto", "jax", 0, 2, None, "none"),  # forced host devices are used when asked for (mirrored), not by auto
    ("mirrored", "jax", 0, 2, None, "mirrored"),
    ("auto", "jax", 1, 1, (2, 0), "multi_worker"),
    ("auto", "torch", 2, 1, None, "none"),
])
def test_strategy_choice(mode, backend, gpus, cpus, cluster, expected):
    assert select_distribution(mode, backend, gpus, cpus, cluster)[0] == expected


def test_strategy_errors_name_the_fix():
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        select_distribution("multi_worker", "tensorflow", 0, 1, None)
    with pytest.raises(ConfigError, match="needs the tensorflow or jax backend"):
        select_distribution("mirrored", "torch", 2, 1, None)
    with pytest.raises(ConfigError, match="KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES"):
        select_distribution("multi_worker", "jax", 1, 1, None)
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        cluster_of("{not json")
    with pytest.raises(ConfigError, match="not in its cluster"):
        cluster_of(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}))
    chief_first = json.dumps({"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]},
                              "task": {"type": "worker", "index": 1}})
    assert cluster_of(chief_first) == (3, 2)
    assert cluster_of(None) is None


def test_keras_process_variables_are_checked():
    assert keras_cluster_of({}) is None
    env = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
           "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert keras_cluster_of(env) == (2, 1)
    with pytest.raises(ConfigError, match="PROCESS_ID=2 is not in 0..1"):
        keras_cluster_of({**env, "KERAS_DISTRIBUTION_PROCESS_ID": "2"})
    with pytest.raises(ConfigError, match="must both be whole numbers"):
        keras_cluster_of({**env, "KERAS_DISTRIBUTION_NUM_PROCESSES": "two"})
    with pytest.raises(ConfigError, match="JOB_ADDRESSES is not set"):
        keras_cluster_of({k: v for k, v in env.items() if "ADDRESSES" not in k})


def test_padding_keeps_the_loss_of_the_unpadded_batch():
    idx = np.array([7, 3, 9, 4, 1])
    ids, w = pad_batch(idx, None, Split(multiple=4))
    assert list(ids) == [7, 3, 9, 4, 1, 7, 3, 9] and len(ids) % 4 == 0
    np.testing.assert_allclose(w, [8 / 5] * 5 + [0] * 3)
    # Keras: sum(w * loss) / padded size == mean loss of the 5 real images, for any losses
    losses = np.array([0.3, 1.2, 0.7, 2.0, 0.1])
    padded_losses = losses[[0, 1, 2, 3, 4, 0, 1, 2]]
    assert (w * padded_losses).sum() / len(ids) == pytest.approx(losses.mean())
    # class weights stay relative; two processes feed halves of the same padded batch
    cw = np.array([2.0, 1.0, 1.0, 0.5, 1.0])
    first, w0 = pad_batch(idx, cw, Split(4, processes=2, index=0))
    second, w1 = pad_batch(idx, cw, Split(4, processes=2, index=1))
    assert list(first) + list(second) == list(ids)
    np.testing.assert_allclose(np.concatenate([w0, w1]), [*(cw * 8 / 5), 0, 0, 0])
    # a batch smaller than the device count still pads (by repeating), a multiple is untouched
    assert list(pad_batch(np.array([5]), None, Split(4))[0]) == [5, 5, 5, 5]
    same, ones = pad_batch(np.array([1, 2, 3, 4]), None, Split(2))
    assert list(same) == [1, 2, 3, 4] and list(ones) == [1, 1, 1, 1]


def test_accuracy_counts_each_real_row_once_whatever_its_weight():
    from vgg_cli.model.metrics import Accuracy

    m = Accuracy()
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]], np.float32)  # right, right, wrong, wrong
    m.update_state(y, probs, sample_weight=np.array([3.0, 0.5, 1.0, 0.0]))  # the last row is padding
    assert float(m.result()) == pytest.approx(2 / 3)
    m.reset_state()
    m.update_state(y, probs)
    assert float(m.result()) == pytest.approx(0.5)


# JAX: the same job as the TensorFlow tests, in batches of 5 (18 images: 5, 5, 4, 4), so that two devices get
# padded batches; class weights travel as sample weights next to the padding's.
JAX_ARGS = ["train.batch_size=5", "train.class_weight={red: 2, green: 1, blue: 1}", "train.backend=jax",
            "promote.min_accuracy=0"]
JAX_ENV = {"JAX_PLATFORMS": "cpu"}
TWO_HOST_DEVICES = {**JAX_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def metric_rows(run: Path) -> list[dict]:
    import csv

    return list(csv.DictReader((run / "metrics.csv").open()))


@pytest.fixture(scope="module")
def jax_single_run(data, tmp_path_factory) -> Path:
    pytest.importorskip("jax")
    runs = tmp_path_factory.mktemp("jax_single") / "runs"
    code, out, err = finish(vgg_process(PLAIN, train_args(data, runs, "single", "train.distribute=none", *JAX_ARGS,
                                                          "output.report=false"), env=JAX_ENV))
    assert code == 0, err[-3000:]
    return Path(out.strip())


def _same_training(run: Path, single: Path) -> None:
    for a, b in zip(head_weights(run), head_weights(single)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    rows, ones = metric_rows(run), metric_rows(single)
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in ones]  # padding is not counted
    assert [r["val_accuracy"] for r in rows] == [r["val_accuracy"] for r in ones]


@pytest.mark.slow
def test_jax_data_parallel_over_two_host_devices_matches_one_device(data, tmp_path, jax_single_run):
    runs = tmp_path / "runs"
    code, out, err = finish(vgg_process(PLAIN, train_args(data, runs, "dp", "train.distribute=mirrored", *JAX_ARGS,
                                                       "output.report=false"),
                                        env=TWO_HOST_DEVICES))
    assert code == 0, err[-3000:]
    run = Path(out.strip())
    device = json.loads((run / "summary.json").read_text())["device"]
    assert device["engine"] == "keras.distribution.DataParallel" and device["replicas"] == 2
    assert "padded with weight-0 copies" in err
    _same_training(run, jax_single_run)


@pytest.mark.slow
def test_jax_two_processes_on_localhost_train_one_model(data, jax_single_run):
    # The chief trains in the single run's output.dir, so it finds every feature cached while the other process
    # computes them all in its scratch folder: neither may wait on the other outside the training steps.
    runs = jax_single_run.parent
    env = {**JAX_ENV, "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{_free_ports(1)[0]}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    procs = [vgg_process(PLAIN, train_args(data, runs, "two_processes", "train.distribute=auto", *JAX_ARGS,
                                    "output.report=false"),
                         env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)}) for i in range(2)]
    (c0, out0, err0), (c1, out1, err1) = [finish(p, timeout=300) for p in procs]
    assert c0 == 0, err0[-3000:]
    assert c1 == 0, err1[-3000:]
    run = Path(out0.strip())
    assert run == (runs / "two_processes").resolve() and out1.strip() == ""
    assert "0 computed, 24 reused" in err0 and "24 computed, 0 reused" in err1
    assert "worker done: the chief wrote the run" in err1
    device = json.loads((run / "summary.json").read_text())["device"]
    assert device["distribute"] == "multi_worker" and device["workers"] == 2 and device["replicas"] == 2
    assert "initialize" in device["engine"]
    _same_training(run, jax_single_run)
