"""Tripwires for the Keras internals vgg touches, all in vgg_cli/platform/keras_fixes.py: a Keras release that renames
or removes them fails here, by name, before a user's run does. test_only_keras_fixes_touches_keras_internals keeps
new patches from being written anywhere else."""

from __future__ import annotations

import keras
import pytest


def test_multi_worker_fit_fixes_find_what_they_patch():
    pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the multi-worker fixes are for the TensorFlow backend")
    from keras.src.backend.tensorflow import trainer as tf_trainer

    assert callable(tf_trainer.reduce_per_replica)
    assert callable(tf_trainer._collective_all_reduce_multi_worker)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert callable(model._symbolic_build) and hasattr(model, "_distribute_strategy")


def test_host_initializers_swap_the_initializers_keras_calls():
    """Keras' initializers compute in __call__ on these classes; inside host_initializers() they return host arrays
    (zeros, ones exactly), and outside they are Keras' own again."""
    import numpy as np

    from vgg_cli.platform import keras_fixes

    glorot = keras.initializers.GlorotUniform()
    before = keras.initializers.GlorotUniform.__call__
    with keras_fixes.host_initializers():
        assert isinstance(glorot((3, 4)), np.ndarray) and not glorot((3, 4)).any()
        assert (keras.initializers.Ones()((2,)) == 1).all()
        layer = keras.layers.Dense(5)
        layer.build((None, 3))
        assert not keras.ops.convert_to_numpy(layer.kernel).any()
    assert keras.initializers.GlorotUniform.__call__ is before
    assert keras.ops.convert_to_numpy(glorot((3, 4))).any()


def test_streamed_saving_switches_off_the_in_memory_path_keras_takes(tmp_path):
    """Keras' save consults saving_lib.is_memory_sufficient to build the weights in memory; inside
    streamed_saving() it answers False (so the HDF5 file streams through a temporary file), and outside it is
    Keras' own again. The saved file still loads with the same weights."""
    import inspect

    import numpy as np
    from keras.src.saving import saving_lib

    from vgg_cli.platform.keras_fixes import streamed_saving

    assert callable(saving_lib.is_memory_sufficient)
    assert "is_memory_sufficient" in inspect.getsource(saving_lib), "Keras no longer decides by it"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    original = saving_lib.is_memory_sufficient
    with streamed_saving():
        assert saving_lib.is_memory_sufficient(model) is False
        model.save(tmp_path / "m.keras")
    assert saving_lib.is_memory_sufficient is original
    back = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(back.get_weights()[0], model.get_weights()[0])
    assert not list(tmp_path.glob("tmp*")), "the temporary HDF5 file was left behind"


@pytest.mark.slow  # it starts a process (the fast tier's rule)
def test_keras_home_is_where_get_file_caches(tmp_path):
    """keras_home() names the folder keras.utils.get_file caches in (checked with a file:// origin, offline)."""
    import subprocess
    import sys

    source = tmp_path / "w.bin"
    source.write_bytes(b"weights")
    code = ("import keras; from vgg_cli.platform.keras_fixes import keras_home; "
            f"p = keras.utils.get_file('w.bin', {source.as_uri()!r}, cache_subdir='models'); "
            "print(p); print(keras_home())")
    home = tmp_path / "home"
    # get_file is the same on every backend; Keras on JAX starts in about half the time Keras on TensorFlow takes
    import importlib.util

    backend = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"} if importlib.util.find_spec("jax") else {}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "KERAS_HOME": str(home), **backend})
    assert r.returncode == 0, r.stderr[-2000:]
    cached, reported = r.stdout.split()[-2:]
    assert reported == str(home) and cached == str(home / "models" / "w.bin")


def test_only_keras_fixes_touches_keras_internals():
    """keras.src (Keras' private modules) is imported only in keras_fixes.py, and class attributes of Keras are
    assigned nowhere else."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "vgg_cli"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "keras_fixes.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(from|import) keras\.src\b", text, re.M) or re.search(r"^\s*keras\.[\w.]+\s*=[^=]", text,
                                                                                    re.M):
            offenders.append(str(path.relative_to(package)))
    assert offenders == []
