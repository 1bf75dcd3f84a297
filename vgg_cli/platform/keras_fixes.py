"""Every patch vgg makes to Keras, confined here and each guarded by a tripwire test (tests/test_keras_fixes.py): a
Keras release that changes what they touch fails that test, not a user's run.

1. ``host_initializers()``: host-side initial values while models are built or loaded, for weights that are
   replaced right after. Keras fills every new variable from its initializer, and a random initializer runs a
   backend random op; on JAX each distinct kernel shape compiles its own XLA program. For VGG16 that was ~5 s to
   build the backbone and ~8 s to load a saved model on a 2-core CPU, every run and every model load, all of it
   thrown away: a backbone's weights are then loaded or drawn (``model.build.load_backbone_weights``), a loaded
   model's all come from its file. Inside it, Keras' random initializers return NumPy zeros and its constant ones
   (zeros, ones) their exact values from NumPy. Only ``__call__`` is swapped, on the classes, for the duration:
   layers keep their real initializer objects, so saved configs are unchanged. Use it only where every
   random-initialised weight is replaced afterwards. A lock keeps two threads from swapping at once.
2. ``streamed_saving()``: ``model.save`` without an in-memory copy of the weights (``saving_lib``).
3. ``keras_home()``: where ``keras.utils.get_file`` caches downloads (Keras' own config).
4. ``multi_worker_fit_fixes()``: two Keras bugs under MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from contextlib import contextmanager

import keras
import numpy as np


@contextmanager
def multi_worker_fit_fixes(plan, weighted: bool):
    """Two Keras 3 bugs stop ``fit`` under MultiWorkerMirroredStrategy (keras-team/keras#20585, open):
    1. to build the loss, metric and optimizer state, fit reduces the first distributed batch with
       ``strategy.reduce("MEAN", (x, y))``, a nested structure the collective all-reduce rejects. We build that
       state here from the batch's shapes (what Keras' own symbolic build does) and drop the model's captured
       strategy, so fit skips that step; every step still runs under the enclosing scope's strategy
       (``distribute_strategy`` falls back to ``tf.distribute.get_strategy()``).
    2. each step's scalar logs (loss, metrics) are reduced across workers with ``axis=0``, which fails on a
       scalar. For the duration of fit they are averaged across replicas (``axis=None``), so every worker logs,
       checkpoints and early-stops on the same numbers.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    source, model = plan.source, plan.fit_model
    batch = [np.zeros((2, *source.shape), source.dtype), np.zeros(2, np.int32)]
    if weighted:
        batch.append(np.ones(2, np.float32))
    model._symbolic_build(data_batch=tuple(batch))
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    captured, model._distribute_strategy = model._distribute_strategy, None

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        model._distribute_strategy = captured


_lock = threading.RLock()


def _zeros(self, shape, dtype=None):
    return np.zeros(shape, keras.backend.standardize_dtype(dtype or "float32"))


def _ones(self, shape, dtype=None):
    return np.ones(shape, keras.backend.standardize_dtype(dtype or "float32"))


def _swaps() -> dict:
    init = keras.initializers
    random_classes = [init.VarianceScaling, init.RandomUniform, init.RandomNormal, init.TruncatedNormal,
                      init.Orthogonal]
    return {**{cls: _zeros for cls in random_classes}, init.Zeros: _zeros, init.Ones: _ones}


@contextlib.contextmanager
def host_initializers():
    """Host-side initial values while a model is built or loaded (see the module docstring, 1.)."""
    with _lock:
        saved = {cls: cls.__dict__["__call__"] for cls in _swaps() if "__call__" in cls.__dict__}
        try:
            for cls, fn in _swaps().items():
                if cls in saved:
                    cls.__call__ = fn
            yield
        finally:
            for cls, fn in saved.items():
                cls.__call__ = fn


@contextmanager
def streamed_saving():
    """Inside it, ``model.save(path)`` (a .keras file) streams the weights through a temporary HDF5 file instead
    of building them in memory first.

    Keras builds a .keras file's HDF5 weights in memory whenever it judges RAM sufficient
    (``saving_lib.is_memory_sufficient``): every checkpoint then needs about 1.3x the file's size on top of the
    model itself, for a moment (+218 MiB at every epoch's end with VGG16, Adam and blocks 4-5 trainable; about
    2 GiB with a flatten + 2x4096 head at 224 px). Keras' other path writes the HDF5 file next to ``path``
    (``tmp*``, removed after) and streams it into the zip: one variable at a time in memory, about 0.3 s more
    per save. A Keras without the function saves its default way (logged at debug level).
    """
    from keras.src.saving import saving_lib

    if not hasattr(saving_lib, "is_memory_sufficient"):
        logging.getLogger("vgg").debug("keras.src.saving.saving_lib.is_memory_sufficient is gone: models are "
                                       "saved Keras' default way")
        yield
        return
    original = saving_lib.is_memory_sufficient
    saving_lib.is_memory_sufficient = lambda model: False
    try:
        yield
    finally:
        saving_lib.is_memory_sufficient = original


def keras_home() -> str:
    """The folder Keras caches downloads under (``KERAS_HOME``, else ``~/.keras``): keras.utils.get_file's
    default ``cache_dir``."""
    from keras.src.backend.config import keras_home as home

    return home()
