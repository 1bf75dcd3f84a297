"""Host-side initial values while models are built or loaded, for weights that are replaced right after.

Keras fills every new variable from its initializer, and a random initializer runs a backend random op; on JAX
each distinct kernel shape compiles its own XLA program. For VGG16 that was ~5 s to build the backbone and ~8 s
to load a saved model on a 2-core CPU (the issue's "8 s model build" on a GPU machine), every run and every model
load, before a single image is seen, and all of it thrown away: a backbone's weights are then loaded or drawn
(``model.load_backbone_weights``), a loaded model's all come from its file.

Inside ``placeholders()`` Keras' random initializers return NumPy zeros and its constant ones (zeros, ones) their
exact values from NumPy. Only ``__call__`` is swapped, on the classes, for the duration: layers keep their real
initializer objects, so saved configs are unchanged. Use it only where every random-initialised weight is replaced
afterwards (anything left over would be zeros, not random). A lock keeps two threads from swapping at once.
"""

from __future__ import annotations

import contextlib
import threading

import keras
import numpy as np

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
def placeholders():
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
