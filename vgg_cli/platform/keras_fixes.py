"""Workarounds for Keras internals, each confined here and guarded by a tripwire test
(tests/test_keras_fixes.py): a Keras release that changes what they touch fails that test, not a user's run."""

from __future__ import annotations

from contextlib import contextmanager

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
