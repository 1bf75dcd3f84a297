"""JAX's persistent compilation cache: the XLA programs a run compiles are kept on disk, so the next run of the
same model (the nightly retrain) loads them instead of compiling again (measured on an H100: the first epoch
of a whole-network run went from ~47 s to 2.7 s with the cache warm; issue 16).

On the JAX backend every run uses ``$JAX_COMPILATION_CACHE_DIR`` when it is set (the user's own cache, never
pruned by vgg), else ``<output.dir>/.cache/jax``, bounded by ``cache.compile_mb`` with JAX's own
least-recently-used eviction (with the ``filelock`` package, one of vgg's dependencies). Every program is
cached however fast it compiled. Hits, misses and compile seconds are counted from JAX's monitoring events and
reported in ``summary.json`` (``device.compile_cache``). Other backends: nothing happens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("vgg")
ENV = "JAX_COMPILATION_CACHE_DIR"
_COUNTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_SECONDS = {"/jax/core/compile/backend_compile_duration": "compile_s",
            "/jax/compilation_cache/compile_time_saved_sec": "saved_s"}


@dataclass
class CompileCacheStats:
    dir: str
    source: str  # JAX_COMPILATION_CACHE_DIR | output.dir
    max_mb: int | None  # None: not bounded by vgg
    hits: int = 0
    misses: int = 0
    compile_s: float = 0.0  # seconds XLA spent compiling (misses)
    saved_s: float = 0.0  # compile seconds the hits saved, as JAX measured them when it cached the programs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compile_s"], d["saved_s"] = round(self.compile_s, 2), round(self.saved_s, 2)
        return d


class _Listener:
    """JAX's monitoring listeners cannot be removed: one pair per process, counting into the current run's stats."""

    active: CompileCacheStats | None = None
    registered = False

    @classmethod
    def event(cls, name: str, **_) -> None:
        key = _COUNTS.get(name)
        if key is not None and cls.active is not None:
            setattr(cls.active, key, getattr(cls.active, key) + 1)

    @classmethod
    def duration(cls, name: str, seconds: float, **_) -> None:
        key = _SECONDS.get(name)
        if key is not None and cls.active is not None:
            setattr(cls.active, key, getattr(cls.active, key) + float(seconds))


def enable(default_dir: Path, max_mb: int) -> CompileCacheStats | None:
    """Turn the persistent cache on for this process (before anything is compiled); None off the JAX backend."""
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    user = os.environ.get(ENV)
    directory = user or str(default_dir)
    bounded = None
    if user is None:  # (JAX's eviction needs filelock, one of vgg's own dependencies)
        bounded = max_mb
        jax.config.update("jax_compilation_cache_max_size", max_mb * 2**20)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if not _Listener.registered:
        jax.monitoring.register_event_listener(_Listener.event)
        jax.monitoring.register_event_duration_secs_listener(_Listener.duration)
        _Listener.registered = True
    _Listener.active = CompileCacheStats(directory, ENV if user else "output.dir", bounded)
    return _Listener.active
