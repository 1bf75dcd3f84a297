"""Which Keras backend runs: chosen before Keras is imported, from what is installed (package metadata only, so
``vgg --help`` stays instant). ``KERAS_BACKEND``, when set, always wins; else ``train.backend`` (train and
lr-find) or ``auto``:

1. ``jax`` when a CUDA build of JAX is installed (a ``jax-cuda*-plugin`` package, as ``pip install
   'vgg-cli[gpu]'`` brings): the GPU path measured fastest (issue 16);
2. else ``tensorflow`` when it is installed (the default install; ``'.[cuda]'`` is TensorFlow's own GPU build);
3. else ``jax``, else ``torch``, whichever is installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from importlib import metadata

from vgg_cli.errors import UnavailableError

BACKENDS = ("tensorflow", "jax", "torch")


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _cuda_jax() -> bool:
    return any(_installed(f"jax-cuda{v}-plugin") for v in (12, 13))


def choose(setting: str = "auto", installed=_installed, cuda_jax=_cuda_jax) -> tuple[str, str]:
    """(backend, why); pure given ``installed`` and ``cuda_jax`` (tests pass fakes)."""
    env = os.environ.get("KERAS_BACKEND", "").strip()
    if env:
        why = "KERAS_BACKEND" + (f" (over train.backend={setting})" if setting not in ("auto", env) else "")
        return env, why
    if setting != "auto":
        if not installed(setting):
            extra = {"jax": "'vgg-cli[jax]' (or '[gpu]' for CUDA)", "torch": "torch"}.get(setting, setting)
            raise UnavailableError(f"train.backend={setting}: {setting} is not installed; pip install {extra}, "
                                   f"or set train.backend=auto")
        return setting, f"train.backend={setting}"
    if cuda_jax() and installed("jax"):
        return "jax", "auto: a CUDA build of JAX is installed"
    for name in BACKENDS:
        if installed(name):
            return name, f"auto: {name} is installed" + ("" if name == "tensorflow" else " (TensorFlow is not)")
    raise UnavailableError("no Keras backend is installed: pip install tensorflow (or 'vgg-cli[jax]')")


def apply(setting: str = "auto") -> str:
    """Set KERAS_BACKEND for the Keras import to come (a no-op when Keras is already imported); returns why."""

    if "keras" in sys.modules:
        return "Keras was already imported"
    name, why = choose(setting)
    os.environ["KERAS_BACKEND"] = name
    return why


def load_frameworks(backend: str = "auto") -> None:
    """Import Keras once, on the backend ``vgg_cli.platform.backend`` chooses (KERAS_BACKEND wins, else ``backend``, a
    train.backend value), keeping TensorFlow's native start-up chatter out of the terminal and cron logs.
    TensorFlow 2.21 prints some of it even at TF_CPP_MIN_LOG_LEVEL=3, so fd 2 is closed off during the import;
    set TF_CPP_MIN_LOG_LEVEL=0 (or 1) to see it."""
    logging.getLogger("tensorflow").addFilter(_quiet_retracing)  # (once: the same filter is not added twice)
    if "keras" in sys.modules:
        return
    why = apply(backend)
    logging.getLogger("vgg").debug("Keras backend: %s (%s)", os.environ["KERAS_BACKEND"], why)
    if os.environ["KERAS_BACKEND"] != "tensorflow":
        import keras  # noqa: F401
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1"):
        import keras  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the C++ runtime writes INFO lines to fd 2 before its log level applies
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # CUDA probing logs here on machines without a GPU
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def native_quiet(what: str = "TensorFlow"):
    """fd 2 off during a block of native code that writes to it past every log level (TensorFlow Lite's converter:
    "fully_quantize: 0, inference_type: 6, ..."; its interpreter: "Created TensorFlow Lite XNNPACK delegate"),
    and Python's FutureWarnings of the libraries called there. What the block wrote comes back on stderr when it
    fails; TF_CPP_MIN_LOG_LEVEL=0 (or 1) shows it always. Keep the block narrow: vgg's own log lines inside it
    would be held back too."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1"):
        yield
        return
    sys.stderr.flush()
    saved, held = os.dup(2), tempfile.TemporaryFile()
    os.dup2(held.fileno(), 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except BaseException:
        os.dup2(saved, 2)
        held.seek(0)
        text = held.read().decode("utf-8", "replace").strip()
        if text:
            sys.stderr.write(f"({what} wrote, before the error below:)\n{text[-4000:]}\n")
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        held.close()


def _quiet_retracing(record: logging.LogRecord) -> bool:
    """TensorFlow's "N out of the last M calls ... triggered tf.function retracing" paragraphs (predict on batches
    of a new size: TTA, Grad-CAM) say nothing a user can act on: they are dropped."""
    return "retracing" not in record.getMessage()
