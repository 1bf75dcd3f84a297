"""Batches for training and evaluation.

This is the one module that uses TensorFlow directly (``tf.data``); model, training and prediction code use
Keras APIs only. Images are decoded by ``vgg_cli.data.images.load_image``, the same function prediction uses,
in parallel (Pillow releases the GIL while decoding), then batched and prefetched.

Training order is a pure function of (seed, epoch): epoch ``e`` visits the images in
``numpy.random.default_rng([seed, e]).permutation(n)``. A run resumed at epoch ``k`` therefore sees exactly the
batches an uninterrupted run would have seen from epoch ``k`` on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vgg_cli.data.images import load_image


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _decode_batches(ds, image_size: int, batch_size: int):
    import tensorflow as tf

    def _load(path: bytes) -> np.ndarray:
        return load_image(path.decode("utf-8"), image_size)

    def _map(path, label):
        image = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)


def make_dataset(paths: Sequence[str], labels: Sequence[int], image_size: int, batch_size: int):
    """Evaluation batches in the given order: (uint8 images [B, S, S, 3], int32 labels [B])."""
    import tensorflow as tf

    if not paths:
        raise ValueError("make_dataset needs at least one image")
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, dtype=np.int32)))
    return _decode_batches(ds, image_size, batch_size).prefetch(tf.data.AUTOTUNE)


def make_train_dataset(paths: Sequence[str], labels: Sequence[int], image_size: int, batch_size: int, seed: int,
                       first_epoch: int, epochs: int):
    """Training batches for epochs ``first_epoch .. epochs-1``, each epoch shuffled by ``epoch_order`` and
    batched on its own (a batch never spans two epochs). Use with ``steps_per_epoch=ceil(n / batch_size)``."""
    import tensorflow as tf

    if not paths:
        raise ValueError("make_train_dataset needs at least one image")
    paths_t = tf.constant(list(paths))
    labels_t = tf.constant(np.asarray(labels, dtype=np.int32))
    n = len(paths)

    def _perm(epoch: np.int64) -> np.ndarray:
        return epoch_order(n, seed, int(epoch)).astype(np.int64)

    def _epoch(epoch):
        order = tf.numpy_function(_perm, [epoch], tf.int64, stateful=False)
        order.set_shape((n,))
        ds = tf.data.Dataset.from_tensor_slices(order).map(lambda i: (tf.gather(paths_t, i), tf.gather(labels_t, i)))
        return _decode_batches(ds, image_size, batch_size)

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(_epoch)  # lazily, one epoch at a time
    return ds.prefetch(tf.data.AUTOTUNE)
