"""Devices and numeric precision.

``select_precision`` is a pure function of the config and the GPUs found, so its choice is tested on CPU machines.
``setup_devices`` applies the GPU choice, memory growth and the Keras dtype policy for the active backend.
``peak_rss_mib`` and ``release_free_memory`` look after host memory (the run's peak, freed memory back to the OS).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Iterator

from vgg_cli.errors import ConfigError
from vgg_cli.platform import distribute
from vgg_cli.platform.compile_cache import enable

# float16 tensor cores arrived with Volta (compute capability 7.0).
MIN_MIXED_CC = (7, 0)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory so far (MiB), or None where the OS does not report it."""
    try:
        import resource  # deferred: POSIX only
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


@functools.cache
def _glibc():
    """The C library when it is glibc (malloc_trim exists), else None. Looked up once per process."""
    if not sys.platform.startswith("linux"):
        return None

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (exists: glibc)
        return libc
    except (OSError, AttributeError):  # musl and other C libraries: nothing to trim
        return None


class Trimmer:
    """malloc_trim at most once per interval: the one piece of process-wide state here, kept in one object.
    ``libc`` (a function returning the C library, or None where there is nothing to trim) and ``clock`` are glibc
    and time.monotonic unless given (a test passes its own, with ``trimming_with``)."""

    def __init__(self, libc=None, clock=None) -> None:
        self.libc, self.clock, self.last = libc or _glibc, clock or time.monotonic, 0.0

    def __call__(self, min_interval_s: float) -> None:
        libc = self.libc()
        if libc is not None and self.clock() - self.last >= min_interval_s:
            libc.malloc_trim(0)
            self.last = self.clock()


_trimmer = Trimmer()


@contextlib.contextmanager
def trimming_with(trimmer: Trimmer) -> Iterator[Trimmer]:
    """``release_free_memory`` trims with ``trimmer`` inside the block (then with the process's own again)."""
    global _trimmer
    saved, _trimmer = _trimmer, trimmer
    try:
        yield trimmer
    finally:
        _trimmer = saved


def release_free_memory(min_interval_s: float = 1.0) -> None:
    """Hand memory that the C allocator holds but no longer uses back to the OS (glibc's malloc_trim; a no-op
    elsewhere), at most once per ``min_interval_s`` (a trim walks the heaps). Called between batches and epochs."""
    _trimmer(min_interval_s)


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: tuple[int, int] | None


@dataclass
class DeviceInfo:
    backend: str
    gpus: list[dict] = field(default_factory=list)
    precision: str = "float32"
    note: str = ""
    distribute: str = "none"  # none | mirrored | multi_worker
    distribute_note: str = ""
    engine: str = ""  # what does it: tf.distribute.MirroredStrategy, keras.distribution.DataParallel, ...
    replicas: int = 1
    worker: int = 0  # this process's index among the workers (multi_worker), 0 = the chief
    workers: int = 1
    strategy: object = field(default=None, repr=False, compare=False)
    compile_cache: object = field(default=None, repr=False, compare=False)  # compile_cache.CompileCacheStats

    @property
    def is_chief(self) -> bool:
        """Only the chief writes the run directory (multi_worker); a single process always is."""
        return self.worker == 0

    def scope(self):
        """The tf.distribute strategy's or Keras distribution's scope (models, optimizers and fit live in it), else
        a no-op."""

        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("strategy", "compile_cache")}
        d["gpus"] = [dict(g) for g in self.gpus]
        d["compile_cache"] = self.compile_cache.to_dict() if self.compile_cache is not None else None
        return d


def select_precision(mode: str, gpus: list[Gpu]) -> tuple[str, str]:
    """(Keras dtype policy, reason) for ``train.mixed_precision`` = auto|on|off."""
    if mode == "off":
        return "float32", "mixed_precision=off"
    if mode == "on":
        if not gpus:
            return "mixed_float16", "mixed_precision=on without a GPU: float16 on CPU is slow and gives no speed-up"
        return "mixed_float16", "mixed_precision=on"
    if not gpus:
        return "float32", "no GPU: float32"
    weak = [g for g in gpus if g.compute_capability is None or tuple(g.compute_capability) < MIN_MIXED_CC]
    if weak:
        return "float32", f"GPU {weak[0].name} has compute capability {weak[0].compute_capability} < 7.0: float32"
    return "mixed_float16", "GPU with compute capability >= 7.0: mixed_float16"


def _tf_gpus(requested: list[int] | None) -> list[Gpu]:
    import tensorflow as tf

    physical = tf.config.list_physical_devices("GPU")
    if requested is not None:
        bad = [i for i in requested if i >= len(physical)]
        if bad:
            fix = (f"use indices 0..{len(physical) - 1} or train.gpus=null" if physical else
                   "set train.gpus=null to train on the CPU (check CUDA_VISIBLE_DEVICES and the CUDA install)")
            raise ConfigError(f"train.gpus {requested} names GPU(s) {bad} but {len(physical)} GPU(s) are visible; "
                              f"{fix}")
        physical = [physical[i] for i in requested]
        try:
            tf.config.set_visible_devices(physical, "GPU")
        except RuntimeError as e:  # devices already initialised in this process
            raise ConfigError(f"train.gpus could not be applied ({e}); set CUDA_VISIBLE_DEVICES instead") from None
    out = []
    for dev in physical:
        try:
            tf.config.experimental.set_memory_growth(dev, True)
        except RuntimeError:
            pass  # already initialised (e.g. a second run in the same process): growth was set the first time
        details = tf.config.experimental.get_device_details(dev)
        cc = details.get("compute_capability")
        out.append(Gpu(details.get("device_name", dev.name), tuple(cc) if cc else None))
    return out


def _parse_cc(value) -> tuple[int, int] | None:
    """'9.0' / (9, 0) -> (9, 0)."""
    try:
        if isinstance(value, str):
            major, minor = value.split(".")[:2]
            return int(major), int(minor)
        return int(value[0]), int(value[1])
    except (TypeError, ValueError, IndexError):
        return None


def _jax_gpus() -> list[Gpu]:
    """This process's GPUs (a multi-process job's other GPUs are not this process's to describe)."""
    import jax

    try:
        devices = jax.local_devices(backend="gpu")
    except RuntimeError:  # no GPU platform in this jaxlib
        return []
    return [Gpu(getattr(d, "device_kind", str(d)), _parse_cc(getattr(d, "compute_capability", None)))
            for d in devices]


def _torch_gpus() -> list[Gpu]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [Gpu(torch.cuda.get_device_name(i), _parse_cc(torch.cuda.get_device_capability(i)))
            for i in range(torch.cuda.device_count())]


def setup_devices(train_cfg, compile_cache_dir=None, compile_cache_mb: int = 2048) -> DeviceInfo:
    """Choose GPUs, enable memory growth, set the global Keras dtype policy and the data parallelism of
    ``train.distribute`` (``vgg_cli.platform.distribute``); on JAX, with ``compile_cache_dir``, turn on the persistent
    compilation cache (``vgg_cli.platform.compile_cache``) first."""
    import keras


    backend = keras.backend.backend()
    cache = None
    if compile_cache_dir is not None:
        cache = enable(compile_cache_dir, compile_cache_mb)
    cluster = distribute.env_cluster(backend)
    if backend == "jax" and cluster is not None and cluster[0] > 1 and train_cfg.distribute in ("auto",
                                                                                                  "multi_worker"):
        distribute.start_jax_processes(cluster)  # before JAX looks at a device
    gpus = _gpus(backend, train_cfg.gpus)
    policy, note = select_precision(train_cfg.mixed_precision, gpus)
    keras.mixed_precision.set_global_policy(policy)
    info = DeviceInfo(backend=backend,
                      gpus=[{"name": g.name, "compute_capability": g.compute_capability} for g in gpus],
                      precision=policy, note=note, compile_cache=cache)
    kind, why = distribute.select_distribution(train_cfg.distribute, backend, len(gpus),
                                               _cpu_devices(backend, gpus, train_cfg.distribute), cluster)
    info.distribute, info.distribute_note = kind, why
    if kind == "none":
        return info
    info.engine = distribute.ENGINES[(backend, kind)]
    if backend == "tensorflow":
        info.strategy = distribute.make_tf_strategy(kind, len(gpus))
        info.replicas = int(info.strategy.num_replicas_in_sync)
    else:
        info.strategy = distribute.make_jax_data_parallel()
        info.replicas = int(info.strategy.device_mesh.devices.size)
    if kind == "multi_worker":
        info.workers, info.worker = cluster
    return info


def _gpus(backend: str, requested: list[int] | None) -> list[Gpu]:
    if backend == "tensorflow":
        return _tf_gpus(requested)
    if requested is not None:
        raise ConfigError(f"train.gpus is only supported on the tensorflow backend (backend {backend}); "
                          f"use CUDA_VISIBLE_DEVICES instead")
    if backend == "jax":
        return _jax_gpus()
    if backend == "torch":
        return _torch_gpus()
    return []


def _cpu_devices(backend: str, gpus: list, mode: str) -> int:
    """The local CPU devices data parallelism could use without a GPU (logical TF devices, forced JAX host
    devices); only looked at for train.distribute=mirrored or auto."""
    if gpus or mode not in ("mirrored", "auto"):
        return 1
    if backend == "tensorflow":
        if mode != "mirrored":
            return 1
        import tensorflow as tf  # listing logical devices starts TF's runtime: never before a multi-worker strategy

        return len(tf.config.list_logical_devices("CPU"))
    if backend == "jax":
        import jax

        return len(jax.local_devices(backend="cpu"))
    return 1
