"""Devices and numeric precision.

``select_precision`` is a pure function of the config and the GPUs found, so its choice is tested on CPU machines.
``setup_devices`` applies the GPU choice, memory growth and the Keras dtype policy for the active backend.
``peak_rss_mib`` and ``release_free_memory`` look after host memory (the run's peak, freed memory back to the OS).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

from vgg_cli.errors import ConfigError

# float16 tensor cores arrived with Volta (compute capability 7.0).
MIN_MIXED_CC = (7, 0)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory so far (MiB), or None where the OS does not report it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


_glibc_handle = None
_last_trim = 0.0


def _glibc():
    """The C library when it is glibc (malloc_trim exists), else None."""
    global _glibc_handle
    if _glibc_handle is None:
        _glibc_handle = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.malloc_trim  # noqa: B018 (exists: glibc)
                _glibc_handle = libc
            except (OSError, AttributeError):  # musl and other C libraries: nothing to trim
                pass
    return _glibc_handle or None


def release_free_memory(min_interval_s: float = 1.0) -> None:
    """Hand memory that the C allocator holds but no longer uses back to the OS (glibc's malloc_trim; a no-op
    elsewhere), at most once per ``min_interval_s`` (a trim walks the heaps). Called between batches and epochs."""
    global _last_trim
    libc = _glibc()
    if libc is None:
        return
    now = time.monotonic()
    if now - _last_trim >= min_interval_s:
        libc.malloc_trim(0)
        _last_trim = time.monotonic()


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

    def to_dict(self) -> dict:
        return asdict(self)


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


def setup_devices(train_cfg) -> DeviceInfo:
    """Choose GPUs, enable memory growth and set the global Keras dtype policy."""
    import keras

    backend = keras.backend.backend()
    gpus: list[Gpu] = []
    if backend == "tensorflow":
        gpus = _tf_gpus(train_cfg.gpus)
    elif train_cfg.gpus is not None:
        raise ConfigError(f"train.gpus is only supported on the tensorflow backend (KERAS_BACKEND={backend}); "
                          f"use CUDA_VISIBLE_DEVICES instead")
    policy, note = select_precision(train_cfg.mixed_precision, gpus)
    keras.mixed_precision.set_global_policy(policy)
    return DeviceInfo(backend=backend,
                      gpus=[{"name": g.name, "compute_capability": g.compute_capability} for g in gpus],
                      precision=policy, note=note)
