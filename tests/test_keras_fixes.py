"""Tripwires for the Keras internals vgg touches (vgg_cli/platform/keras_fixes.py, vgg_cli/platform/fast_init.py): a Keras release
that renames or removes them fails here, by name, before a user's multi-worker run or model build does."""

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


def test_fast_init_swaps_the_initializers_keras_calls():
    """Keras' initializers compute in __call__ on these classes; inside placeholders() they return host arrays
    (zeros, ones exactly), and outside they are Keras' own again."""
    import numpy as np

    from vgg_cli.platform import fast_init

    glorot = keras.initializers.GlorotUniform()
    before = keras.initializers.GlorotUniform.__call__
    with fast_init.placeholders():
        assert isinstance(glorot((3, 4)), np.ndarray) and not glorot((3, 4)).any()
        assert (keras.initializers.Ones()((2,)) == 1).all()
        layer = keras.layers.Dense(5)
        layer.build((None, 3))
        assert not keras.ops.convert_to_numpy(layer.kernel).any()
    assert keras.initializers.GlorotUniform.__call__ is before
    assert keras.ops.convert_to_numpy(glorot((3, 4))).any()
