"""Data parallelism (``train.distribute``) through each backend's own engine.

- TensorFlow: ``tf.distribute`` — ``MirroredStrategy`` over local GPUs (or logical CPU devices) and
  ``MultiWorkerMirroredStrategy`` over processes/machines described by ``TF_CONFIG``.
- JAX: Keras' distribution API — ``keras.distribution.DataParallel`` over the local devices, and over the devices
  of several processes after ``keras.distribution.initialize`` (JAX's multi-process runtime), which reads
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` / ``_NUM_PROCESSES`` / ``_PROCESS_ID``. On CPU the processes talk through
  JAX's Gloo collectives.

Both keep one meaning: ``train.batch_size`` is the global batch, split across the replicas, gradients averaged;
process 0 (the chief) writes the run directory. JAX shards a batch evenly, so a global batch whose size is not a
multiple of the device count is padded with copies that carry sample weight 0, and the real images' weights are
scaled by padded/real size: Keras divides a batch's weighted loss sum by the (padded) batch size, so the loss and
its gradient equal those of the unpadded batch (``pad_batch``). Each process feeds its own slice of every global
batch (``data_split``).

The choice (``select_distribution``) is a pure function, tested anywhere; the engines are tested on CPU with forced
host devices and with two processes on localhost.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from vgg_cli.errors import ConfigError

KERAS_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")
ENGINES = {("tensorflow", "mirrored"): "tf.distribute.MirroredStrategy",
           ("tensorflow", "multi_worker"): "tf.distribute.MultiWorkerMirroredStrategy",
           ("jax", "mirrored"): "keras.distribution.DataParallel",
           ("jax", "multi_worker"): "keras.distribution.DataParallel over processes (keras.distribution.initialize)"}


def cluster_of(tf_config: str | None) -> tuple[int, int] | None:
    """(number of tasks, this task's index with the chief first) from a TF_CONFIG value, as Kubeflow's TFJob sets
    it; None when there is none. A 'chief' task counts as worker 0 and shifts the workers up by one."""
    if not tf_config:
        return None
    try:
        conf = json.loads(tf_config)
        cluster, task = conf["cluster"], conf.get("task", {})
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"TF_CONFIG is not valid JSON with a 'cluster' and a 'task' ({tf_config[:120]!r}); fix "
                          f"it or unset it") from None
    n = len(chiefs) + len(workers)
    if n == 0 or kind not in ("chief", "worker") or index >= len(cluster.get(kind, [])):
        raise ConfigError(f"TF_CONFIG: task {kind!r} {index} is not in its cluster {cluster}; fix TF_CONFIG")
    return n, (index if kind == "chief" else len(chiefs) + index)


def keras_cluster_of(env) -> tuple[int, int] | None:
    """(processes, this process's index) from the KERAS_DISTRIBUTION_* variables (what ``keras.distribution.
    initialize`` reads), or None when they are not set."""
    addresses, count, pid = (env.get(k) for k in KERAS_ENV)
    if not count and not pid:
        return None
    try:
        n, i = int(count or ""), int(pid or "")
    except ValueError:
        raise ConfigError(f"KERAS_DISTRIBUTION_NUM_PROCESSES={count!r} and KERAS_DISTRIBUTION_PROCESS_ID={pid!r} "
                          f"must both be whole numbers (processes, this one's index from 0); fix or unset them") \
            from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"KERAS_DISTRIBUTION_PROCESS_ID={i} is not in 0..{n - 1} (KERAS_DISTRIBUTION_NUM_PROCESSES"
                          f"={n}); give each process its own index")
    if n > 1 and not addresses:
        raise ConfigError("KERAS_DISTRIBUTION_JOB_ADDRESSES is not set: give every process the coordinator's "
                          "host:port (process 0's), e.g. 10.0.0.1:1234")
    return n, i


def env_cluster(backend: str, env=None) -> tuple[int, int] | None:
    """The process group this process belongs to, from the environment of ``backend``'s engine."""
    env = os.environ if env is None else env
    if backend == "tensorflow":
        return cluster_of(env.get("TF_CONFIG"))
    if backend == "jax":
        return keras_cluster_of(env)
    return None


def select_distribution(mode: str, backend: str, n_gpus: int, n_cpu_devices: int,
                        cluster: tuple[int, int] | None) -> tuple[str, str]:
    """(none|mirrored|multi_worker, reason) for ``train.distribute``; pure, so its choices are tested anywhere."""
    if mode == "none":
        return "none", "distribute=none"
    if backend not in ("tensorflow", "jax"):
        if mode == "auto":
            return "none", f"data parallelism needs the tensorflow or jax backend (backend {backend})"
        raise ConfigError(f"train.distribute={mode} needs the tensorflow or jax backend (backend {backend}); set "
                          f"train.backend=jax (or tensorflow), or train.distribute=none")
    if mode == "multi_worker" or (mode == "auto" and cluster is not None and cluster[0] > 1):
        if cluster is None:
            need = ("TF_CONFIG (the cluster's workers and this task)" if backend == "tensorflow" else
                    "KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and _PROCESS_ID")
            raise ConfigError(f"train.distribute=multi_worker on {backend} needs {need}; set it for every process, "
                              f"or use train.distribute=auto")
        return "multi_worker", f"{cluster[0]} processes, this is process {cluster[1]}"
    if mode == "mirrored":
        if n_gpus:
            return "mirrored", f"distribute=mirrored over {n_gpus} GPU(s)"
        return "mirrored", f"distribute=mirrored without a GPU: over {n_cpu_devices} CPU device(s)"
    if n_gpus > 1:
        return "mirrored", f"{n_gpus} GPUs: data parallel"
    return "none", "one device" if n_gpus == 1 or n_cpu_devices <= 1 else "no GPU"


def process_role(mode: str, backend: str) -> tuple[int, int] | None:
    """(processes, this process's index) when ``train.distribute`` = ``mode`` on ``backend`` makes this process one
    of a multi-process job, else None. Read from the environment before Keras is imported, and decided once per
    command (``vgg_cli.job.lifecycle.open_job``), so a non-chief process stays away from the chief's run directory and lock."""
    if mode not in ("auto", "multi_worker"):
        return None
    cluster = env_cluster(backend)
    if cluster is None or (mode == "auto" and cluster[0] < 2):
        return None
    return cluster


def in_distribution_scope() -> bool:
    """Inside a tf.distribute strategy's scope (training under train.distribute on TensorFlow)."""
    if "tensorflow" not in sys.modules:
        return False
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy()


def in_multi_worker_scope() -> bool:
    """Inside a MultiWorkerMirroredStrategy's scope (train.distribute=multi_worker on TensorFlow)."""
    if not in_distribution_scope():
        return False
    import tensorflow as tf

    return isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)


def make_tf_strategy(kind: str, n_gpus: int):
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if n_gpus:
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("GPU")])
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])


def start_jax_processes(cluster: tuple[int, int]) -> None:
    """Join the JAX process group (``keras.distribution.initialize``, which reads KERAS_DISTRIBUTION_*); must run
    before JAX touches a device. CPU collectives go through Gloo (GPUs use NCCL whatever this says)."""
    import jax
    import keras

    if jax.distributed.is_initialized():  # already joined (a second run in this process)
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a JAX without the option: its default
        pass
    with _stdout_to_stderr():  # Gloo prints "[Gloo] Rank 0 is connected ..." on stdout, vgg's output
        keras.distribution.initialize()
        jax.devices()  # the backends (and their collectives) start here


@contextlib.contextmanager
def _stdout_to_stderr():
    """File descriptor 1 points at stderr for the duration (for what C++ libraries print)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def make_jax_data_parallel():
    """DataParallel over every device of every process; the data is sharded by ``data_split``, not by Keras."""
    import jax
    import keras

    return keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)


@dataclass(frozen=True)
class Split:
    """How a JAX global batch is fed: padded to a ``multiple`` of the devices, and cut into ``processes`` equal
    slices of which this process feeds slice ``index``."""
    multiple: int
    processes: int = 1
    index: int = 0


def data_split() -> Split | None:
    """The active Keras (JAX) distribution's needs, or None (no distribution, or another backend)."""
    if "keras" not in sys.modules:
        return None
    import keras

    if keras.backend.backend() != "jax":
        return None
    dist = keras.distribution.distribution()
    if dist is None:
        return None
    import jax

    mesh = dist.device_mesh
    multiple = int(mesh.shape[mesh.axis_names.index(dist.batch_dim_name)])
    return Split(multiple, jax.process_count(), jax.process_index())


def pad_batch(idx: np.ndarray, weights: np.ndarray | None, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, sample weights) of this process's slice of the global batch ``idx`` padded to a multiple of
    ``split.multiple``: pad items repeat the batch's first items with weight 0; the real items' weights (1, or
    ``weights``) are scaled by padded/real size, so the batch's loss is the unpadded batch's loss."""
    m = len(idx)
    p = -(-m // split.multiple) * split.multiple
    base = np.ones(m, np.float32) if weights is None else np.asarray(weights, np.float32)
    w = np.concatenate([base * np.float32(p / m), np.zeros(p - m, np.float32)])
    full = np.resize(idx, p)
    size = p // split.processes
    part = slice(split.index * size, (split.index + 1) * size)
    return full[part], w[part]


@contextlib.contextmanager
def no_distribution():
    """Build local (one-device) models inside a JAX distribution's scope, e.g. for work one process does alone."""
    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def local_predictor(model):
    """A predict-on-batch function each process can call on its own, at its own pace: under tf.distribute the
    model called directly (predict_on_batch would shard the batch across workers); under a multi-process JAX
    distribution a one-device copy of the model (its global arrays would make every call a collective every
    process must join); otherwise the model's own predict_on_batch."""
    if in_distribution_scope():
        return lambda x: model(x, training=False)
    split = data_split()
    if split is None or split.processes == 1:
        return model.predict_on_batch
    import keras

    weights = [np.asarray(w) for w in model.get_weights()]
    with no_distribution():
        local = keras.models.clone_model(model)
        local.set_weights(weights)
    return local.predict_on_batch
